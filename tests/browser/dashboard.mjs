// Opens the server's dashboard in Debian's Chromium, as a reviewer would (with TOKEN: typed into the page's token
// field, as with authentication on). Prints one JSON line: the data the page drew, the page's text, how long until
// it was drawn; saves a screenshot into OUT_DIR.
//   node dashboard.mjs SERVER_URL OUT_DIR [TOKEN]
import { reportRun } from './chromium.mjs';

const [server, outDir, token] = process.argv.slice(2);
const TIMEOUT_MS = 60000;
const result = { errors: [], console: [], data: null, text: '', drawnMs: null, requests: [] };
await reportRun(result, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1300 } });
  page.on('pageerror', (e) => result.errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(m.text().slice(0, 300)); });
  page.on('request', (r) => result.requests.push(r.url()));
  await page.goto(`${server}/brats/dashboard`, { timeout: TIMEOUT_MS });
  if (token) {
    await page.locator('#token').waitFor({ state: 'visible', timeout: TIMEOUT_MS });
    await page.locator('#token').fill(token);
    await page.getByRole('button', { name: 'Show' }).click();
  }
  const started = Date.now();
  await page.waitForFunction(() => window.bratsDashboard !== undefined, null, { timeout: TIMEOUT_MS });
  result.drawnMs = Date.now() - started;
  result.data = await page.evaluate(() => window.bratsDashboard);
  await page.waitForTimeout(500); // the training curve's image decoded
  result.text = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/dashboard.png`, fullPage: true });
});
