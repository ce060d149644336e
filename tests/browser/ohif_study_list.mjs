// Opens the OHIF study list (the URL the demo prints) in Debian's Chromium. Prints one JSON line with the
// number of rows it shows and the page's text, and saves a screenshot into OUT_DIR. QUERY (optional) is the
// study list's own search in its URL, e.g. "mrn=<patient id>": OHIF sends it to the archive as a QIDO-RS query.
//   node ohif_study_list.mjs SERVER_URL OUT_DIR [QUERY]
import { reportRun } from './chromium.mjs';

const [server, outDir, query] = process.argv.slice(2);
const result = { errors: [], rows: 0, text: '' };
await reportRun(result, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  page.on('pageerror', (e) => result.errors.push(e.message));
  await page.goto(`${server}/ohif/${query ? `?${query}` : ''}`, { timeout: 90000 });
  await page.waitForSelector('[data-cy^="studyRow"], [data-cy="study-list-results"] tr', { timeout: 90000 });
  await page.waitForTimeout(1500);
  result.rows = await page.locator('[data-cy^="studyRow"]').count();
  result.text = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/ohif_study_list${query ? '_search' : ''}.png` });
});
