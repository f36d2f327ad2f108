// The web view in a real browser (headless Chromium driven by Playwright): run by
// tests/e2e/web.rs against a running system. Usage: node web.mjs <base url> [screenshot dir]
// Exits non-zero, saying what failed, when the page does not do what a person would expect.
// PLAYWRIGHT_DIR is the folder whose node_modules hold playwright-core.
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(`${process.env.PLAYWRIGHT_DIR || process.cwd()}/`);
const { chromium } = require("playwright-core");

const [base, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const outside = [];
page.on("request", (r) => { if (!r.url().startsWith(base)) outside.push(r.url()); });
const problems = [];
page.on("pageerror", (e) => problems.push(String(e)));
const api = async (path, init) => (await fetch(base + path, init)).json();
const step = (what) => console.log(`- ${what}`);
/** Polls `fn(arg)` in the page until it holds (the page's CSP forbids waitForFunction's eval). */
async function until(fn, arg, what, timeout = 10000) {
  const end = Date.now() + timeout;
  while (!(await page.evaluate(fn, arg))) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await page.waitForTimeout(100);
  }
}
// Customers of this run only, so a search finds this run's sagas.
const tag = Date.now().toString(36);

/** Fills the generated create_order form and starts it; returns the saga id from the URL. */
async function startOrder(customer, behaviour) {
  await page.goto(`${base}/#/start/create_order`);
  await page.getByLabel("Test behaviour").selectOption(behaviour);
  await page.locator("#in-input-customer_id").fill(customer);
  await page.locator("#in-input-order_details-storeLocation").fill("Campus Store");
  await page.locator("#in-input-order_details-deliveryLocation").fill("Library");
  await page.locator("#in-input-order_details-deliveryFee").fill("3");
  await page.locator("#in-input-order_details-foodItems-0-name").fill("Burger");
  await page.locator("#in-input-order_details-foodItems-0-price").fill("12.5");
  await page.locator("#in-input-order_details-foodItems-0-quantity").fill("2");
  await page.getByRole("button", { name: "Start create_order" }).click();
  await page.waitForURL(/#\/sagas\/[0-9a-f-]{36}$/);
  return page.url().split("/").pop();
}

/** Opens a saga's page and waits until it is that saga's (not the view before it). */
async function openSaga(id) {
  await page.goto(`${base}/#/sagas/${id}`);
  await page.locator("main p code", { hasText: id }).waitFor();
}

async function waitStatus(status) {
  await page.locator("h1 .status", { hasText: status }).waitFor({ timeout: 30000 });
}

// 1. An order started from the page: its diagram and timeline reach COMPLETED, live.
step("an order from the start form completes, live");
const started = Date.now();
const ok = await startOrder(`c-web-${tag}`, "");
await waitStatus("COMPLETED");
const shownAt = Date.now();
const live = shownAt - started;
// From the commit that ended the saga to the page showing it (one machine, one clock).
const commitToPage = shownAt - Date.parse((await api(`/sagas/${page.url().split("/").pop()}`)).completed_at);
for (const st of ["create_order", "get_payment_info", "authorize_payment", "update_order_status"]) {
  assert.equal(await page.locator(`[data-step="${st}"]`).getAttribute("data-state"), "done", st);
}
assert.equal(await page.locator('.timeline li[data-outcome="succeeded"]').count(), 4);
assert.equal(await page.locator('[data-compensation="create_order"]').getAttribute("data-state"), "none");
if (shots) await page.screenshot({ path: `${shots}/saga.png`, fullPage: true });

// 2. noupdate-: COMPENSATED, both compensations shown as done.
step("a noupdate- order compensates, both compensations shown");
const comp = await startOrder(`web-${tag}`, "noupdate-");
await waitStatus("COMPENSATED");
assert.equal(await page.locator('[data-step="update_order_status"]').getAttribute("data-state"), "failed");
for (const c of ["create_order", "authorize_payment"]) {
  assert.equal(await page.locator(`[data-compensation="${c}"]`).getAttribute("data-state"), "compensated", c);
}
assert.equal(await page.locator('.timeline li[data-kind="compensation"]').count(), 2);
assert.match(await page.locator(".notice.bad").first().innerText(), /update_order_status/);

// The other behaviours, each from the page, each ending where it should.
step("nocard-, declined- and noorder- orders end as their behaviours say");
for (const [behaviour, failed, undone, kept] of [
  ["nocard-", "get_payment_info", ["create_order"], ["authorize_payment"]],
  ["declined-", "authorize_payment", ["create_order"], []],
  ["noorder-", "create_order", [], ["create_order"]],
]) {
  await startOrder(`b-${tag}`, behaviour);
  await waitStatus("COMPENSATED");
  assert.equal(await page.locator(`[data-step="${failed}"]`).getAttribute("data-state"), "failed", behaviour);
  for (const c of undone) {
    assert.equal(await page.locator(`[data-compensation="${c}"]`).getAttribute("data-state"), "compensated", `${behaviour} ${c}`);
  }
  for (const c of kept) {
    assert.equal(await page.locator(`[data-compensation="${c}"]`).getAttribute("data-state"), "none", `${behaviour} ${c}`);
  }
}

// 3. refund_order from its generated form, for the completed order.
step("a refund_order from its generated form completes");
const order = await api(`/sagas/${ok}`);
await page.goto(`${base}/#/start/refund_order`);
await page.locator("#in-input-order_id").fill(order.context.order_id);
await page.locator("#in-input-payment_id").fill(order.context.payment_id);
await page.locator("#in-input-customer_id").fill(order.context.customer_id);
await page.locator("#in-input-reason").fill("cold burger");
await page.getByRole("button", { name: "Start refund_order" }).click();
await page.waitForURL(/#\/sagas\/[0-9a-f-]{36}$/);
await waitStatus("COMPLETED");
assert.equal(await page.locator('[data-step="refund_payment"]').getAttribute("data-state"), "done");
assert.match(await page.locator(".diagram").first().innerText(), /parallel: verify/);

// 4. A completed saga cancelled from its page, with confirmation; a refusal shown in words.
step("a completed order cancelled from its page");
const other = (await api("/orders", { method: "POST", headers: { "content-type": "application/json" },
  body: JSON.stringify({ customer_id: "c-web-cancel", order_details: { foodItems: [{ name: "Tea", price: 2, quantity: 1 }] } }) })).saga_id;
await openSaga(other);
await waitStatus("COMPLETED");
await page.getByRole("button", { name: "Cancel saga" }).click();
await page.getByRole("button", { name: "Cancel it" }).click();
await page.locator("#action-result", { hasText: "being cancelled" }).waitFor();
await waitStatus("CANCELLED");
assert.equal(await page.locator('[data-compensation="create_order"]').getAttribute("data-state"), "compensated");
await openSaga(comp);
await waitStatus("COMPENSATED");
await page.getByRole("button", { name: "Cancel saga" }).click();
await page.getByRole("button", { name: "Cancel it" }).click();
await page.locator("#action-result", { hasText: "The API refused: the saga is COMPENSATED and cannot be cancelled" }).waitFor();

// 5. The list: every saga, filters, search, live.
step("the list filters, searches and follows live");
await page.goto(`${base}/#/`);
for (const id of [ok, comp, other]) await page.locator(`tr[data-saga="${id}"]`).waitFor();
if (shots) await page.screenshot({ path: `${shots}/list.png` });
await page.getByLabel("Id, customer, order").fill(`noupdate-web-${tag}`);
await page.getByRole("button", { name: "Show" }).click();
await page.waitForURL(/search=noupdate-web/);
await until((id) => {
  const rows = document.querySelectorAll("tbody tr");
  return rows.length === 1 && rows[0].getAttribute("data-saga") === id;
}, comp, "the search shows only the noupdate- saga");
await page.goto(`${base}/#/?status=COMPLETED`);
await until(() => document.querySelector("#f-status").value === "COMPLETED"
  && [...document.querySelectorAll("tbody tr .status")].every((e) => e.textContent === "COMPLETED")
  && document.querySelectorAll("tbody tr .status").length > 0, null, "the COMPLETED sagas are listed");
const before = await page.locator("tbody tr").count();
await api("/orders", { method: "POST", headers: { "content-type": "application/json" },
  body: JSON.stringify({ customer_id: "c-web-live", order_details: { foodItems: [{ name: "Tea", price: 2, quantity: 1 }] } }) });
await until((n) => document.querySelectorAll("tbody tr").length > n, before, "a new saga appears in the list, live");

// 6. Usable: every control labelled, keyboard reachable, one column on a phone.
step("labels, keyboard and a phone's width");
// Each view waited for by a form of its own: a hash change re-renders in place, and the view
// before it would be checked (half removed) otherwise.
for (const [view, form] of [
  ["#/", 'form[role="search"]'],
  ["#/start/create_order", 'form[aria-label="Start create_order"]'],
  ["#/start/refund_order", 'form[aria-label="Start refund_order"]'],
]) {
  await page.goto(`${base}/${view}`);
  await page.locator(`main ${form}`).waitFor();
  const unlabelled = await page.$$eval("input, select, textarea", (els) =>
    els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).map((e) => e.id || e.name));
  assert.deepEqual(unlabelled, [], `${view}: controls without a label`);
}
// After a view opens, focus is on its content: Tab reaches its first control, and a saga's link
// opens with Enter.
await page.goto(`${base}/#/`);
await page.locator("tbody tr").first().waitFor();
await page.keyboard.press("Tab");
assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), "f-status");
for (let i = 0; i < 20; i++) {
  await page.keyboard.press("Tab");
  if (await page.evaluate(() => document.activeElement && document.activeElement.closest("tbody") !== null)) break;
}
await page.keyboard.press("Enter");
await page.waitForURL(/#\/sagas\/[0-9a-f-]{36}$/);
await page.setViewportSize({ width: 390, height: 800 });
await openSaga(comp);
await waitStatus("COMPENSATED");
const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
assert.ok(overflow <= 0, `the saga page is ${overflow}px wider than a phone`);

// What the page weighs and how long it takes to load.
await page.setViewportSize({ width: 1280, height: 900 });
await page.goto(`${base}/#/`);
await page.locator("tbody tr").first().waitFor();
const timing = await page.evaluate(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource").filter((r) => r.name.includes("/ui/"));
  return { load: Math.round(nav.loadEventEnd - nav.startTime), bytes: nav.encodedBodySize + res.reduce((a, r) => a + r.encodedBodySize, 0) };
});
assert.deepEqual(outside, [], "the page fetched something from elsewhere");
assert.deepEqual(problems, [], "script errors on the page");
console.log(JSON.stringify({ page_bytes: timing.bytes, load_ms: timing.load, start_to_completed_ms: live, commit_to_page_ms: commitToPage }));
await browser.close();
