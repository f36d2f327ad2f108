-- One database per component: the orchestrator and each service own their data.
CREATE DATABASE orchestrator;
CREATE DATABASE orders;
CREATE DATABASE users;
CREATE DATABASE payments;
CREATE DATABASE notifications;
