// Opens the OHIF study list (the URL the demo prints) in Debian's Chromium. Prints one JSON line with the
// StudyInstanceUIDs of the rows it shows (from the row links) and saves a screenshot into OUT_DIR.
//   node ohif_study_list.mjs SERVER_URL OUT_DIR
import { reportRun } from './chromium.mjs';

const [server, outDir] = process.argv.slice(2);
const result = { errors: [], rows: 0, text: '' };
await reportRun(result, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  page.on('pageerror', (e) => result.errors.push(e.message));
  await page.goto(`${server}/ohif/`, { timeout: 90000 });
  await page.waitForSelector('[data-cy^="studyRow"], [data-cy="study-list-results"] tr', { timeout: 90000 });
  await page.waitForTimeout(1500);
  result.rows = await page.locator('[data-cy^="studyRow"]').count();
  result.text = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/ohif_study_list.png` });
});
