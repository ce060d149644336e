// BraTS Label: a label sent back for changes shows its reviewer's comment when its study opens in OHIF's MONAI Label
// mode (appended to app-config.js by the server, after the Submit label button).
//
// Next Sample hands a returned label back to the annotator who saved it before any new study; the panel then reloads
// the page on that study. Here, each time the mode shows a study it has not checked, the server's
// GET /brats/review/{study} says whether its final label was sent back; if so, the comment, who asked and when stay
// on screen as a notification until the annotator has read them. The answer is kept in window.bratsReturnedReview.
(function bratsReturnedLabel() {
  'use strict';
  const MODE_ROUTE = '/monai-label';
  const POLL_MS = 1000;
  const SHOWN_MS = 120000;
  let checked = null;

  function studyOnScreen() {
    return new URL(window.location.href).searchParams.get('StudyInstanceUIDs');
  }

  async function checkReturned(study) {
    const headers = window.services?.userAuthenticationService?.getAuthorizationHeader?.() || {};
    const answer = await fetch(`${window.location.origin}/brats/review/${encodeURIComponent(study)}`, { headers });
    if (!answer.ok) {
      return; // not a study of this server's, or no right to read it: nothing to show
    }
    const review = await answer.json();
    window.bratsReturnedReview = review;
    const returned = review.returned;
    if (!returned) {
      return;
    }
    const when = returned.requested_at ? ` on ${returned.requested_at.slice(0, 16).replace('T', ' ')} UTC` : '';
    const level = returned.level ? ` (${returned.level})` : '';
    window.services.uiNotificationService.show({
      title: `Changes requested${level}`,
      message: `${returned.reviewed_by || 'A reviewer'} sent this label back${when}: "${returned.comment}". Correct it and press Submit label.`,
      type: 'warning',
      duration: SHOWN_MS,
    });
  }

  window.setInterval(() => {
    const study = studyOnScreen();
    if (!window.services?.uiNotificationService || !window.location.pathname.includes(MODE_ROUTE) || !study || study === checked) {
      return;
    }
    const signedIn = window.services.userAuthenticationService?.getAuthorizationHeader?.()?.Authorization;
    if ((window.bratsAuthEnabled || window.config.oidc?.length) && !signedIn) {
      return; // the server asks for a token (OHIF takes ?token= or the provider's sign-in a while after start): wait for it
    }
    checked = study;
    checkReturned(study).catch((error) => console.warn('BraTS Label: could not read the review of this study', error));
  }, POLL_MS);
})();
