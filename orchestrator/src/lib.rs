pub mod saga;
