// BraTS Label: a "Submit label" button in OHIF's MONAI Label mode (appended to app-config.js by the server).
//
// MONAI Label's panel can pre-segment but not save. The button sends the labelmap OHIF draws (its voxels,
// with the volume's origin, axes and spacing, as NRRD) and the segments' names to the server's
// PUT /datastore/label, the route 3D Slicer uses: the server checks it lies on the study's grid, maps the
// values by name, keeps it with history and audit, counts it for retraining and stores it as a DICOM SEG
// in the archive. (OHIF's own DICOM SEG export is not used: in this build it writes the frames' pixels in
// the opposite slice order from their positions, so the label would be upside down.)
// The server's answer (saved, or why not) is shown as a notification.
(function bratsSubmitLabel() {
  'use strict';
  const BUTTON_ID = 'BratsSubmitLabel';
  const COMMAND = 'bratsSubmitLabel';
  const CONTEXT = 'BRATS_LABEL';
  const MODE_ROUTE = '/monai-label';
  const CLIENT_ID = 'OHIF';
  const POLL_MS = 1000;

  function notify(type, title, message) {
    window.services.uiNotificationService.show({ title, message, type, duration: type === 'success' ? 6000 : 15000 });
  }

  function segmentationToSubmit() {
    const { segmentationService, viewportGridService } = window.services;
    const active = segmentationService.getActiveSegmentation(viewportGridService.getActiveViewportId());
    if (active) {
      return active;
    }
    const all = segmentationService.getSegmentations();
    return all.length ? all[all.length - 1] : null;
  }

  function vector(values) {
    return `(${Array.from(values).map((v) => Number(v).toPrecision(10)).join(',')})`;
  }

  // The labelmap volume as NRRD: x fastest, as cornerstone keeps it; geometry in LPS, as DICOM's.
  function labelmapNrrd(volume) {
    const [nx, ny, nz] = volume.dimensions;
    const d = volume.direction;
    const s = volume.spacing;
    const axes = [0, 1, 2].map((i) => vector([d[3 * i] * s[i], d[3 * i + 1] * s[i], d[3 * i + 2] * s[i]]));
    const header = [
      'NRRD0004', 'type: uint8', 'dimension: 3', 'space: left-posterior-superior', `sizes: ${nx} ${ny} ${nz}`,
      `space directions: ${axes.join(' ')}`, 'kinds: domain domain domain', 'encoding: raw', `space origin: ${vector(volume.origin)}`, '', '',
    ].join('\n');
    const voxels = volume.voxelManager.getCompleteScalarDataArray();
    return new Blob([header, Uint8Array.from(voxels)], { type: 'application/octet-stream' });
  }

  function serverReason(request, error) {
    try {
      const detail = JSON.parse(request.responseText).detail;
      if (detail) {
        return typeof detail === 'string' ? detail : JSON.stringify(detail);
      }
    } catch (e) {
      // not the server's JSON: fall through
    }
    return `the server answered ${request.status || 'nothing'} (${(error && error.message) || request.statusText || 'no detail'})`;
  }

  function retrainMessage(retrain) {
    if (!retrain || !retrain.enabled) {
      return '';
    }
    if (retrain.new_labels === 0) {
      return ' A training on the new labels has started.';
    }
    return ` ${retrain.new_labels} of ${retrain.labels_needed} new labels towards the next training.`;
  }

  async function submitLabel() {
    const { segmentationService, displaySetService } = window.services;
    const segmentation = segmentationToSubmit();
    if (!segmentation) {
      notify('warning', 'Nothing to submit', 'Run Auto-Segmentation or draw a segmentation first.');
      return;
    }
    const volume = segmentationService.getLabelmapVolume(segmentation.segmentationId);
    const study = displaySetService.getActiveDisplaySets().find((d) => d.Modality === 'MR')?.StudyInstanceUID;
    if (!volume || !study) {
      notify('error', 'Label not submitted', 'No labelmap or study on screen to submit.');
      return;
    }
    const labelInfo = Object.values(segmentation.segments).filter(Boolean).map((s) => ({ idx: s.segmentIndex, name: s.label }));
    const form = new FormData();
    form.append('params', JSON.stringify({ client_id: CLIENT_ID, label_info: labelInfo }));
    form.append('label', labelmapNrrd(volume), 'ohif_label.nrrd');
    const request = new XMLHttpRequest();
    window.bratsLastSubmit = { state: 'sending' };
    await new Promise((resolve) => {
      request.onloadend = resolve;
      request.open('PUT', `${window.location.origin}/datastore/label?image=${encodeURIComponent(study)}&tag=final`);
      // the user's token, with authentication on, is added by sendTokenToThisServer below, as to every request
      request.send(form);
    });
    if (request.status !== 200) {
      const reason = serverReason(request);
      window.bratsLastSubmit = { state: 'refused', status: request.status, reason };
      notify('error', 'Label not saved', reason);
      return;
    }
    const answer = JSON.parse(request.responseText || '{}');
    window.bratsLastSubmit = { state: 'saved', status: request.status, answer };
    notify('success', 'Label saved', `Saved as the final label of this study.${retrainMessage(answer.retrain)}`);
  }

  function installButton() {
    const { toolbarService } = window.services;
    const section = toolbarService.state.buttonSections.primary;
    if (!section || section.includes(BUTTON_ID)) {
      return;
    }
    if (!window.commandsManager.getContext(CONTEXT)) {
      window.commandsManager.createContext(CONTEXT);
    }
    window.commandsManager.registerCommand(CONTEXT, COMMAND, { commandFn: submitLabel });
    toolbarService.addButtons([
      {
        id: BUTTON_ID,
        uiType: 'ohif.radioGroup',
        props: {
          icon: 'icon-upload',
          label: 'Submit label',
          tooltip: 'Save the segmentation as this study\'s final label (kept by the server, and as DICOM SEG in the archive)',
          commands: [{ commandName: COMMAND, context: CONTEXT }],
          evaluate: 'evaluate.action',
        },
      },
    ]);
    // first in the toolbar: the mode's tools fill the rest, and the patient header covers the right end
    const tools = section.splice(0);
    toolbarService.createButtonSection('primary', [BUTTON_ID, ...tools]);
  }

  // With authentication on, every request the viewer makes to this server carries the user's token. OHIF adds it
  // to its DICOMweb requests; the bundled MONAI Label panel (info, Next Sample, Auto-Segmentation) sends none,
  // so it would be refused. Same-origin requests that set no Authorization header get OHIF's.
  (function sendTokenToThisServer() {
    const open = XMLHttpRequest.prototype.open;
    const setHeader = XMLHttpRequest.prototype.setRequestHeader;
    const send = XMLHttpRequest.prototype.send;
    XMLHttpRequest.prototype.open = function openTracked(method, url, ...rest) {
      this.bratsSameOrigin = new URL(url, window.location.href).origin === window.location.origin;
      this.bratsHasAuthorization = false;
      return open.call(this, method, url, ...rest);
    };
    XMLHttpRequest.prototype.setRequestHeader = function setHeaderTracked(name, value) {
      if (String(name).toLowerCase() === 'authorization') {
        this.bratsHasAuthorization = true;
      }
      return setHeader.call(this, name, value);
    };
    XMLHttpRequest.prototype.send = function sendWithToken(body) {
      const auth = this.bratsSameOrigin && !this.bratsHasAuthorization && window.services?.userAuthenticationService?.getAuthorizationHeader?.();
      if (auth && auth.Authorization) {
        setHeader.call(this, 'Authorization', auth.Authorization);
      }
      return send.call(this, body);
    };
  })();

  // The mode rebuilds its toolbar each time it is entered, so keep looking.
  window.setInterval(() => {
    if (window.services && window.commandsManager && window.location.pathname.includes(MODE_ROUTE)) {
      try {
        installButton();
      } catch (error) {
        console.warn('BraTS Label: could not add the Submit label button', error);
      }
    }
  }, POLL_MS);
})();
