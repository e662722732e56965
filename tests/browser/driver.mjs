// Drives headless Chromium for the Rust browser tests: one JSON request per stdin line
// ({"id","op",...}), one JSON answer per stdout line ({"id","ok","result"|"error"}).
// The tests keep the logic; this file only translates requests to Playwright calls.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.PGPUSH_CHROMIUM ?? '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const pages = new Map();
const logs = new Map();
let nextPage = 1;

const ops = {
  async newPage({ initScript }) {
    const page = await context.newPage();
    const name = `p${nextPage++}`;
    pages.set(name, page);
    logs.set(name, []);
    page.on('console', (message) => logs.get(name).push(`${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => logs.get(name).push(`pageerror: ${error.message}`));
    if (initScript) await page.addInitScript(initScript);
    return name;
  },
  goto: ({ page, url }) => pages.get(page).goto(url, { waitUntil: 'load' }).then(() => null),
  evaluate: ({ page, expression }) => pages.get(page).evaluate(expression),
  async waitFor({ page, expression, timeoutMs }) {
    const handle = await pages.get(page).waitForFunction(expression, null, { timeout: timeoutMs, polling: 50 });
    return handle.jsonValue();
  },
  fill: ({ page, selector, text }) => pages.get(page).fill(selector, text).then(() => null),
  press: ({ page, selector, key }) => pages.get(page).press(selector, key).then(() => null),
  click: ({ page, selector }) => pages.get(page).click(selector).then(() => null),
  screenshot: ({ page, path }) => pages.get(page).screenshot({ path }).then(() => null),
  logs: ({ page }) => logs.get(page) ?? [],
  async close({ page }) {
    await pages.get(page)?.close();
    pages.delete(page);
    return null;
  },
};

// Requests run one after another, in the order they came.
let queue = Promise.resolve();
const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  queue = queue.then(() => handle(line));
});

async function handle(line) {
  const request = JSON.parse(line);
  let answer;
  try {
    const result = await ops[request.op](request);
    answer = { id: request.id, ok: true, result: result ?? null };
  } catch (error) {
    answer = { id: request.id, ok: false, error: String(error?.message ?? error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

input.on('close', () => {
  queue = queue.then(async () => {
    await browser.close();
    process.exit(0);
  });
});
process.stdout.write(`${JSON.stringify({ ready: true, version: browser.version() })}\n`);
