// Opens a study in the OHIF viewer bundled with MONAI Label (its MONAI Label mode), as an annotator does,
// in Debian's Chromium. Prints one JSON line: the series OHIF lists, the panel's connection to the server,
// what its MONAI Label panel does (connect, Auto-Segmentation > Run), and the page errors; saves screenshots of the page and of the first viewport into OUT_DIR.
//   node ohif_open_study.mjs SERVER_URL STUDY_UID OUT_DIR
import { launchChromium } from './chromium.mjs';

const [server, study, outDir] = process.argv.slice(2);
const TIMEOUT_MS = 90000;

const browser = await launchChromium();
const result = { errors: [], series: [], connected: false, info: null, panel: false, infer: null, segmentations: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  // the MONAI Label panel reads its server from this cookie
  await context.addCookies([{ name: 'MONAILABEL_SERVER_URL', value: `${server}/`, url: server }]);
  const page = await context.newPage();
  page.on('pageerror', (e) => result.errors.push(e.message));
  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}`, { timeout: TIMEOUT_MS });

  // the study's series, as OHIF's display-set service holds them once loaded
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => /\(\d+\/\d+\)/.test(document.body.innerText), null, { timeout: TIMEOUT_MS }); // an image is on screen
  result.series = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets()
    .map((d) => ({ modality: d.Modality, description: d.SeriesDescription, uid: d.SeriesInstanceUID })));
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();

  // connect the MONAI Label panel (its refresh button): it reads the server's /info/
  const info = page.waitForResponse((r) => r.url().startsWith(`${server}/info/`), { timeout: TIMEOUT_MS });
  await page.locator('#monailabelServerURL').locator('xpath=following::button[1]').click();
  const answer = await info;
  result.connected = answer.ok();
  result.info = await answer.json();
  await page.getByText('Auto-Segmentation').waitFor({ timeout: TIMEOUT_MS }); // the panel lists what the server offers
  result.panel = await page.evaluate(() => document.body.innerText.includes('Active Learning') && document.body.innerText.includes('Auto-Segmentation'));
  await page.waitForTimeout(2000); // let the viewports settle before the pictures
  await page.screenshot({ path: `${outDir}/ohif_monai_label_mode.png` });
  await page.locator('.cornerstone-canvas').first().screenshot({ path: `${outDir}/ohif_viewport.png` });

  // Auto-Segmentation > Run: the server segments the series on screen; OHIF loads the result as a segmentation
  const inferred = page.waitForResponse((r) => r.url().startsWith(`${server}/infer/segmentation`), { timeout: 300000 });
  await page.getByRole('button', { name: 'Run' }).first().click();
  const infer = await inferred;
  result.infer = { status: infer.status(), image: new URL(infer.url()).searchParams.get('image') };
  await page.waitForFunction(() => window.services.segmentationService.getSegmentations().length > 0, null, { timeout: TIMEOUT_MS });
  result.segmentations = await page.evaluate(() => window.services.segmentationService.getSegmentations()
    .map((s) => Object.values(s.segments || {}).filter(Boolean).map((g) => g.label)));

  await page.screenshot({ path: `${outDir}/ohif_after_autosegmentation.png` });
} catch (e) {
  result.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
