// The emulator's page in a real browser, as a person uses it: open the page, click Install,
// see the bot's welcome appear at once and the reminder after the configured delay, see the page
// send the bot a read receipt for the reminder once it has been on screen, and keep a full-page
// screenshot of the chat.
//
//   node emulator-page.mjs <page-url> <screenshot.png>
//
// or HERALD_PAGE_URL and HERALD_PAGE_SCREENSHOT. The texts to wait for are the bot's defaults
// unless HERALD_WELCOME_TEXT / HERALD_REMINDER_TEXT say otherwise (the services' variables);
// HERALD_PAGE_STEP_TIMEOUT_MS bounds each step (default 30000). Runs Debian's Chromium
// (/usr/bin/chromium, or HERALD_CHROMIUM); `scripts/ensure-browser` installs it and this
// script's modules. Exits 0 when every step passed, 1 naming the step that failed.

import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { chromium } from "playwright-core";

const url = process.argv[2] || process.env.HERALD_PAGE_URL;
const screenshot = process.argv[3] || process.env.HERALD_PAGE_SCREENSHOT;
if (!url || !screenshot) {
  console.error("usage: node emulator-page.mjs <page-url> <screenshot.png>");
  process.exit(2);
}
const executablePath = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
const welcome = process.env.HERALD_WELCOME_TEXT || "Hi! I am going to remind you to say something to me soon!";
const reminder = process.env.HERALD_REMINDER_TEXT || "Hey! It's been a while. How are you?";
const timeout = Number(process.env.HERALD_PAGE_STEP_TIMEOUT_MS) || 30_000;

// Without the background-networking switches Chromium keeps trying to reach Google's services
// and stalls where there is no way out to the internet.
const args = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const started = Date.now();
const since = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
const log = (line) => console.log(`emulator-page: [${since()}] ${line}`);

/** Runs one step; a failure names the step. */
async function step(name, work) {
  try {
    const result = await work();
    log(`ok: ${name}`);
    return result;
  } catch (error) {
    const reason = String(error && error.message ? error.message : error).split("\n")[0];
    throw new Error(`step "${name}" failed: ${reason}`);
  }
}

// A fresh profile each run: nothing carried over from another run (sessionStorage, caches).
const profile = await mkdtemp(join(tmpdir(), "herald-emulator-page-"));
let context;
let page;
const pageErrors = [];
let failure = null;
try {
  context = await step(`launch ${executablePath}`, () =>
    chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      args,
      viewport: { width: 1280, height: 800 },
      timeout,
    }),
  );
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("pageerror", (error) => pageErrors.push(error.message));

  await step(`open ${url}`, async () => {
    const response = await page.goto(url, { waitUntil: "load" });
    if (!response || !response.ok()) throw new Error(`answered ${response && response.status()}`);
  });
  // The page fills in the user and then asks the emulator where the bot is and opens its event
  // stream; its header shows the bot endpoint once that is done.
  await step("wait for the page to be ready", () =>
    page.locator("#where").filter({ hasText: "bot endpoint" }).waitFor(),
  );
  const user = await page.locator("#user").inputValue();
  log(`acting as user ${user} (${await page.locator("#name").inputValue()})`);

  // A person clicks the Install button; the page says how the bot answered.
  const install = page.getByRole("button", { name: "Install", exact: true });
  let clickedAt = 0;
  await step("click Install", async () => {
    await install.click();
    clickedAt = Date.now();
  });
  await step("see the install succeed", async () => {
    const status = page.locator("#status.ok, #status.bad");
    await status.waitFor();
    const text = await page.locator("#status").textContent();
    if (await page.locator("#status.bad").count()) throw new Error(`the page says: ${text}`);
    log(`status: ${text}`);
  });

  const botMessage = (text) => page.locator("#messages .msg.bot").filter({ hasText: text });
  await step("see the welcome appear", () => botMessage(welcome).waitFor());
  log(`welcome on the page ${Date.now() - clickedAt} ms after the click`);
  // The reminder comes after the configured delay; the step timeout must outlast it.
  await step("see the reminder appear", () => botMessage(reminder).waitFor());
  log(`reminder on the page ${Date.now() - clickedAt} ms after the click`);

  await step("see the welcome above the reminder, and nothing else from the bot", async () => {
    const texts = (await page.locator("#messages .msg.bot .bubble").allTextContents()).map((t) => t.trim());
    if (texts.length !== 2 || texts[0] !== welcome || texts[1] !== reminder) {
      throw new Error(`the bot's messages on the page are ${JSON.stringify(texts)}`);
    }
  });
  // Reading: once the reminder has been on screen for about a second, the page sends Teams' read
  // receipt naming it (once per new message); the emulator's inspection API shows what reached
  // the bot.
  await step("see a read receipt for the reminder reach the bot", async () => {
    const origin = new URL(url).origin;
    const get = async (path) => {
      const response = await fetch(origin + path);
      if (!response.ok) throw new Error(`${path} answered ${response.status}`);
      return response.json();
    };
    const conversations = await get("/_emulator/conversations");
    const chat = conversations.find((c) => c.kind === "personal" && c.user && c.user.aadObjectId === user);
    if (!chat) throw new Error("the emulator knows no personal chat of the page's user");
    const path = `/_emulator/conversations/${encodeURIComponent(chat.id)}`;
    const sent = await get(`${path}/activities`);
    const newest = sent[sent.length - 1].id;
    const deadline = Date.now() + timeout;
    for (;;) {
      const inbound = await get(`${path}/inbound`);
      const read = inbound
        .filter((i) => i.activity.type === "event" && i.activity.name === "application/vnd.microsoft.readReceipt")
        .map((i) => ({ id: i.activity.value && i.activity.value.lastReadMessageId, status: i.status }));
      const ids = read.map((r) => Number(r.id));
      if (ids.some((id, n) => n > 0 && !(id > ids[n - 1]))) {
        throw new Error(`read receipts repeat or go back: ${JSON.stringify(read)}`);
      }
      const last = read[read.length - 1];
      if (last && last.id === newest) {
        log(`read receipts ${JSON.stringify(read)}`);
        return;
      }
      if (Date.now() > deadline) throw new Error(`none names ${newest}: ${JSON.stringify(read)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });
  await step("no script errors on the page", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("; "));
  });
} catch (error) {
  failure = error;
} finally {
  // The screenshot is kept either way: on failure it shows where the page got to.
  if (page) {
    try {
      await mkdir(dirname(resolve(screenshot)), { recursive: true });
      await page.screenshot({ path: screenshot, fullPage: true });
      log(`screenshot: ${screenshot}`);
    } catch (error) {
      console.error(`emulator-page: no screenshot: ${error.message}`);
    }
  }
  if (context) await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true }).catch(() => {});
}

if (failure) {
  console.error(`emulator-page: ${failure.message}`);
  if (pageErrors.length) console.error(`emulator-page: script errors on the page: ${pageErrors.join("; ")}`);
  process.exit(1);
}
log("the welcome and the reminder appeared on the page, and the page told the bot they were read");
