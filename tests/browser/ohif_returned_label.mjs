// An annotator whose label a reviewer sent back: in OHIF's MONAI Label mode on another study, the panel's Next Sample
// hands the returned study back; its OK opens it, and the reviewer's comment is shown as a notification. Prints one
// JSON line (Next Sample's answer, the study opened, the server's review as the page read it, the notice's text);
// saves a screenshot into OUT_DIR.
//   node ohif_returned_label.mjs SERVER_URL STUDY_UID OUT_DIR
import { reportRun } from './chromium.mjs';
import { connectPanel, newMonaiLabelPage, openNextSample } from './monai_label_panel.mjs';

const [server, study, outDir] = process.argv.slice(2);
const TIMEOUT_MS = 90000;

async function waitForStudy(page) {
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT_MS });
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();
}

const result = { errors: [], console: [], nextSample: null, opened: null, review: null, notice: '' };
await reportRun(result, async (browser) => {
  const page = await newMonaiLabelPage(browser, server, result);
  page.on('dialog', (d) => d.accept()); // Next Sample's "This action will reload current page" confirmation
  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}`, { timeout: TIMEOUT_MS });
  await waitForStudy(page);
  await connectPanel(page, server);
  result.nextSample = await openNextSample(page, server, TIMEOUT_MS);
  await waitForStudy(page);
  result.opened = new URL(page.url()).searchParams.get('StudyInstanceUIDs');
  await page.waitForFunction((uid) => window.bratsReturnedReview?.case === uid, result.opened, { timeout: TIMEOUT_MS });
  result.review = await page.evaluate(() => window.bratsReturnedReview);
  const toast = page.getByText('Changes requested', { exact: false }).first();
  await toast.waitFor({ timeout: TIMEOUT_MS });
  await page.waitForTimeout(2000); // the first image drawn behind the notice, for the picture
  result.notice = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/ohif_returned_label.png` });
});
