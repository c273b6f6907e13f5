// Drives Debian's headless chromium with playwright-core for the Python tests: one JSON
// command per stdin line, one JSON reply per stdout line. Started by tests/services/browser.py.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const context = await chromium.launchPersistentContext(process.env.BROWSER_PROFILE_DIR, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = context.pages()[0] || (await context.newPage());
const consoleErrors = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const commands = {
  goto: async ({ url }) => { await page.goto(url, { waitUntil: "load" }); return page.url(); },
  // Waits until `expression` (a function body over no arguments) returns a truthy value.
  waitFor: async ({ expression, timeoutMs }) => {
    const handle = await page.waitForFunction(new Function(expression), null, { timeout: timeoutMs, polling: 50 });
    return await handle.jsonValue();
  },
  eval: async ({ expression }) => await page.evaluate(new Function(expression)),
  screenshot: async ({ path }) => { await page.screenshot({ path, fullPage: true }); return path; },
  consoleErrors: async () => consoleErrors,
  close: async () => { await context.close(); return true; },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let reply;
  try {
    const { cmd, ...args } = JSON.parse(line);
    reply = { ok: true, value: (await commands[cmd](args)) ?? null };
  } catch (err) {
    reply = { ok: false, error: String(err && err.stack || err) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
  if (line.includes('"close"')) break;
}
process.exit(0);
