// An annotator's session in the OHIF viewer bundled with MONAI Label (its MONAI Label mode), in Debian's
// Chromium: open a study, check its series and that an image renders, connect the MONAI Label panel, ask it
// for the Next Sample and open that study, run Auto-Segmentation, correct the result with OHIF's brush, and
// press Submit label. Prints one JSON line with what each step saw; saves screenshots into OUT_DIR.
// With TOKEN (authentication on) the viewer opens as OHIF does with ?token=: the user's token is sent with
// every request. Next Sample is skipped then: its page reload drops a ?token= sign-in (a deployment signs in
// through the identity provider instead).
//   node ohif_annotation_loop.mjs SERVER_URL STUDY_UID OUT_DIR [TOKEN]
import { reportRun } from './chromium.mjs';
import { connectPanel, newMonaiLabelPage, openNextSample } from './monai_label_panel.mjs';

const [server, study, outDir, token] = process.argv.slice(2);
const TIMEOUT_MS = 90000;
const INFER_TIMEOUT_MS = 300000;
const CORRECTED_SEGMENT = 'edema'; // painted with the brush, so the submitted label differs from the pre-label
const BRUSH_STROKE = [[-0.25, -0.05], [0.25, -0.05], [0.25, 0.05], [-0.25, 0.05]]; // viewport fractions from its centre

async function waitForStudy(page) {
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => /\(\d+\/\d+\)/.test(document.body.innerText), null, { timeout: TIMEOUT_MS }); // an image is on screen
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();
}

async function overlayVoxels(page) {
  // voxels per segment and slice in the labelmap OHIF draws over the images (what the annotator sees),
  // slices in the labelmap volume's order, with that volume's first-slice position
  return page.evaluate(() => {
    const { segmentationService } = window.services;
    const segmentation = segmentationService.getSegmentations()[0];
    const names = Object.fromEntries(Object.values(segmentation.segments).filter(Boolean).map((s) => [s.segmentIndex, s.label]));
    const volume = segmentationService.getLabelmapVolume(segmentation.segmentationId);
    const [columns, rows, slices] = volume.dimensions;
    const perSlice = Object.fromEntries(Object.values(names).map((n) => [n, new Array(slices).fill(0)]));
    const voxels = volume.voxelManager.getCompleteScalarDataArray();
    for (let i = 0; i < voxels.length; i++) if (voxels[i]) perSlice[names[voxels[i]]][Math.floor(i / (columns * rows))] += 1;
    return { perSlice, origin: Array.from(volume.origin), direction: Array.from(volume.direction) };
  });
}

async function brushStroke(page, segmentLabel) {
  // OHIF's Brush (the toolbar's segmentation tool), on the segment to correct, dragged across the first viewport
  const segmentIndex = await page.evaluate((label) => {
    const { segmentationService } = window.services;
    const segmentation = segmentationService.getSegmentations()[0];
    const segment = Object.values(segmentation.segments).find((s) => s && s.label === label);
    segmentationService.setActiveSegment(segmentation.segmentationId, segment.segmentIndex);
    window.commandsManager.run({ commandName: 'setToolActiveToolbar', commandOptions: { toolName: 'CircularBrush', toolGroupIds: ['mpr'] } });
    return segment.segmentIndex;
  }, segmentLabel);
  const box = await page.locator('.cornerstone-canvas').first().boundingBox();
  const at = ([x, y]) => [box.x + box.width * (0.5 + x), box.y + box.height * (0.5 + y)];
  await page.mouse.move(...at(BRUSH_STROKE[0]));
  await page.mouse.down();
  for (const point of BRUSH_STROKE.slice(1)) await page.mouse.move(...at(point), { steps: 15 });
  await page.mouse.up();
  return segmentIndex;
}

const result = { errors: [], requestsWithoutToken: 0, series: [], connected: false, info: null, panel: false, nextSample: null, opened: null, infer: null, segmentations: [], overlay: null, corrected: null, submit: null, review: null, console: [] };
await reportRun(result, async (browser) => {
  const page = await newMonaiLabelPage(browser, server, result);
  page.on('dialog', (d) => d.accept()); // Next Sample's "This action will reload current page" confirmation
  page.on('request', (r) => { if (token && r.url().startsWith(server) && !r.url().includes('/ohif/')) result.requestsWithoutToken += r.headers().authorization ? 0 : 1; });
  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}${token ? `&token=${token}` : ''}`, { timeout: TIMEOUT_MS });

  // the study's series, as OHIF's display-set service holds them once loaded
  await waitForStudy(page);
  result.series = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets()
    .map((d) => ({ modality: d.Modality, description: d.SeriesDescription, uid: d.SeriesInstanceUID })));
  const connection = await connectPanel(page, server);
  result.connected = connection.ok;
  result.info = connection.info;
  result.panel = await page.evaluate(() => document.body.innerText.includes('Active Learning') && document.body.innerText.includes('Auto-Segmentation'));
  await page.waitForTimeout(2000); // let the viewports settle before the pictures
  await page.screenshot({ path: `${outDir}/ohif_monai_label_mode.png` });
  await page.locator('.cornerstone-canvas').first().screenshot({ path: `${outDir}/ohif_viewport.png` });

  // Active Learning > Next Sample: the server picks a study; its dialog's OK opens it
  if (!token) {
    result.nextSample = await openNextSample(page, server, TIMEOUT_MS);
    await waitForStudy(page);
    result.opened = new URL(page.url()).searchParams.get('StudyInstanceUIDs');
    await connectPanel(page, server);
  }

  // Auto-Segmentation > Run: the server segments the series on screen; OHIF loads the result as a segmentation
  const [infer] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/infer/segmentation`), { timeout: INFER_TIMEOUT_MS }),
    page.getByRole('button', { name: 'Run' }).first().click(),
  ]);
  result.infer = { status: infer.status(), image: new URL(infer.url()).searchParams.get('image') };
  await page.waitForFunction(() => window.services.segmentationService.getSegmentations().length > 0, null, { timeout: TIMEOUT_MS });
  result.segmentations = await page.evaluate(() => window.services.segmentationService.getSegmentations()
    .map((s) => Object.values(s.segments || {}).filter(Boolean).map((g) => g.label)));
  await page.waitForFunction(() => window.services.segmentationService.getLabelmapVolume(window.services.segmentationService.getSegmentations()[0].segmentationId)
    .voxelManager.getCompleteScalarDataArray().some((v) => v > 0), null, { timeout: TIMEOUT_MS }); // the result is drawn
  result.overlay = await overlayVoxels(page);
  await page.waitForTimeout(2000);
  await page.screenshot({ path: `${outDir}/ohif_after_autosegmentation.png` });

  // the annotator's correction, then Submit label (the button the server adds to the toolbar)
  result.corrected = { segment: CORRECTED_SEGMENT, index: await brushStroke(page, CORRECTED_SEGMENT) };
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/datastore/label`) && r.request().method() === 'PUT', { timeout: TIMEOUT_MS }),
    page.locator('[data-cy="BratsSubmitLabel"]').click(),
  ]);
  await page.waitForFunction(() => window.bratsLastSubmit && window.bratsLastSubmit.state !== 'sending', null, { timeout: TIMEOUT_MS });
  result.submit = { status: answer.status(), outcome: await page.evaluate(() => window.bratsLastSubmit) };
  await page.getByText('Label saved').waitFor({ timeout: TIMEOUT_MS }); // the notification the annotator sees
  await page.waitForTimeout(1500); // it fades in
  await page.screenshot({ path: `${outDir}/ohif_label_submitted.png` });
  result.review = await page.evaluate(() => window.bratsReturnedReview ?? null); // the study's review, asked on opening
});
