// OHIF's Point Prompts (the MONAI Label panel of the bundled OHIF) on one series of a study, in Debian's Chromium:
// open the study with only that series, connect the panel, open Point Prompts, choose the refinement model and a
// label, click once in the viewport of the series' own plane, press Run, and press Submit label. Prints one JSON
// line with what each step saw (the click's world point as cornerstone holds it, the request OHIF sent, the
// labelmap the answer was drawn into); saves screenshots into OUT_DIR.
//   node ohif_point_prompts.mjs SERVER_URL STUDY_UID SERIES_UID VIEWPORT LABEL OUT_DIR
// VIEWPORT: the MPR viewport to click in (mpr-axial, mpr-sagittal or mpr-coronal).
import { reportRun } from './chromium.mjs';
import { connectPanel, newMonaiLabelPage } from './monai_label_panel.mjs';

const [server, study, series, viewportId, label, outDir] = process.argv.slice(2);
const TIMEOUT_MS = 120000;
const INFER_TIMEOUT_MS = Number(process.env.INFER_TIMEOUT_MS || 300000);

function multipartParams(body) {
  // OHIF's MonaiLabelClient posts one form field, params, as JSON
  const match = /name="params"\r\n\r\n([\s\S]*?)\r\n--/.exec(body || '');
  return match ? JSON.parse(match[1]) : null;
}

async function labelmapState(page) {
  return page.evaluate((name) => {
    const { segmentationService } = window.services;
    const segmentation = segmentationService.getSegmentations()[0];
    const index = Object.values(segmentation.segments).find((s) => s && s.label === name)?.segmentIndex;
    const volume = segmentationService.getLabelmapVolume(segmentation.segmentationId);
    const voxels = volume.voxelManager.getCompleteScalarDataArray();
    let labelled = 0;
    let ofLabel = 0;
    for (let i = 0; i < voxels.length; i++) {
      if (voxels[i]) labelled += 1;
      if (voxels[i] === index) ofLabel += 1;
    }
    return { dimensions: Array.from(volume.dimensions), labelled, ofLabel, segmentIndex: index };
  }, label);
}

const result = { errors: [], tool: null, box: null, shown: null, image: null, connected: false, click: null, request: null, infer: null, before: null, after: null, submit: null, console: [] };
await reportRun(result, async (browser) => {
  const page = await newMonaiLabelPage(browser, server, result);
  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}&SeriesInstanceUIDs=${series}`, { timeout: TIMEOUT_MS });

  // the MPR layout of the one series, an image on screen
  await page.waitForFunction(() => {
    try { return window.services.viewportGridService.getState().viewports.size === 3; } catch (e) { return false; } // not set up yet
  }, null, { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => /\(\d+\/\d+\)/.test(document.body.innerText), null, { timeout: TIMEOUT_MS });
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();
  result.shown = await page.evaluate(() => {
    const { viewportGridService, displaySetService } = window.services;
    return [...viewportGridService.getState().viewports.values()].flatMap((v) => v.displaySetInstanceUIDs)
      .map((uid) => displaySetService.getDisplaySetByUID(uid).SeriesInstanceUID);
  });
  result.image = await page.evaluate((id) => {
    const viewport = window.cornerstone.getRenderingEngines()[0].getViewport(id);
    const imageData = viewport.getImageData().imageData;
    return { dimensions: imageData.getDimensions(), spacing: imageData.getSpacing(), direction: Array.from(imageData.getDirection()), origin: imageData.getOrigin() };
  }, viewportId);

  // the panel reads the server's /info/ and makes the segmentation the answers are drawn into
  result.connected = (await connectPanel(page, server, TIMEOUT_MS)).ok;
  await page.waitForFunction(() => window.services.segmentationService.getSegmentations().length > 0, null, { timeout: TIMEOUT_MS });
  result.before = await labelmapState(page);

  // Point Prompts: the model first (choosing one clears the points), then the label, then the click
  await page.locator('label[for="tab-3"]').click();
  const section = page.locator('label[for="tab-3"]').locator('xpath=..');
  await section.locator('select.selectBox').selectOption('refinement');
  await section.locator('tr.clickable-row', { hasText: label }).click();
  result.tool = await page.evaluate(() => window.cornerstoneTools.ToolGroupManager.getToolGroup('mpr').getActivePrimaryMouseButtonTool());
  // the viewport of the series' own plane made the active one first (a first click on another only activates it)
  await page.evaluate((id) => window.services.viewportGridService.setActiveViewportId(id), viewportId);
  await page.waitForTimeout(500);
  const box = await page.locator(`div[data-viewport-uid="${viewportId}"] .cornerstone-canvas`).first().boundingBox();
  result.box = box;
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5);
  await page.mouse.down();
  await page.mouse.up();
  await page.waitForTimeout(1000);
  result.click = await page.evaluate(() => window.cornerstoneTools.annotation.state.getAllAnnotations()
    .filter((a) => a.metadata.toolName === 'ProbeMONAILabel').map((a) => Array.from(a.data.handles.points[0])));
  await page.screenshot({ path: `${outDir}/ohif_point_prompts_click.png` });

  // Run: OHIF sends every click so far as voxel indices of the series on screen
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/infer/refinement`), { timeout: INFER_TIMEOUT_MS }),
    section.getByRole('button', { name: 'Run' }).click(),
  ]);
  result.request = { image: new URL(answer.url()).searchParams.get('image'), params: multipartParams(answer.request().postData()) };
  result.infer = { status: answer.status() };
  await page.waitForFunction(() => document.body.innerText.includes('Successful') || document.body.innerText.includes('Failed'), null, { timeout: TIMEOUT_MS });
  await page.waitForTimeout(1500);
  result.after = await labelmapState(page);
  await page.screenshot({ path: `${outDir}/ohif_point_prompts_answer.png` });

  // Submit label (the button the server adds to the toolbar)
  const [saved] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/datastore/label`) && r.request().method() === 'PUT', { timeout: TIMEOUT_MS }),
    page.locator('[data-cy="BratsSubmitLabel"]').click(),
  ]);
  await page.waitForFunction(() => window.bratsLastSubmit && window.bratsLastSubmit.state !== 'sending', null, { timeout: TIMEOUT_MS });
  result.submit = { status: saved.status(), outcome: await page.evaluate(() => window.bratsLastSubmit) };
});
