// Opens one study in OHIF's basic viewer (the mode a radiologist reads in) in Debian's Chromium and reports the
// series OHIF lists under it (its display sets: modality, description, whether OHIF could load it) and the study
// browser's text; saves a screenshot into OUT_DIR.
//   node ohif_study_series.mjs SERVER_URL STUDY_UID OUT_DIR
import { reportRun } from './chromium.mjs';

const [server, study, outDir] = process.argv.slice(2);
const TIMEOUT_MS = 90000;
const result = { errors: [], series: [], text: '' };
await reportRun(result, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  page.on('pageerror', (e) => result.errors.push(e.message));
  await page.goto(`${server}/ohif/viewer?StudyInstanceUIDs=${study}`, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => /\(\d+\/\d+\)/.test(document.body.innerText), null, { timeout: TIMEOUT_MS }); // an image is on screen
  await page.waitForTimeout(6000); // every series' display set, the study browser's thumbnails, the first image drawn
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();
  result.series = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets()
    .map((d) => ({ modality: d.Modality, description: d.SeriesDescription, uid: d.SeriesInstanceUID, sopClassUids: d.SOPClassUID ? [d.SOPClassUID] : (d.sopClassUids || []), unsupported: Boolean(d.unsupported) })));
  result.text = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/ohif_measurement_report_listed.png` });
});
