// Ferry's few behaviours that htmx attributes do not cover. The Content-Security-Policy allows
// no inline script, so pages name a behaviour with a data- attribute and this file does it.
// Listeners sit on the document: they work for fragments htmx swaps in later too.
(function () {
  "use strict";

  // <button data-confirm="Put node1 in maintenance?"> in a plain form: ask before it submits.
  // The text comes from an attribute, so a name with quotes in it stays text.
  document.addEventListener("submit", function (event) {
    var asker = event.submitter && event.submitter.hasAttribute("data-confirm")
      ? event.submitter : event.target.closest("[data-confirm]");
    if (asker && !window.confirm(asker.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    // <select data-autosubmit>: a filter that reloads its page on change.
    if (target.matches("select[data-autosubmit]")) {
      target.form.requestSubmit();
      return;
    }
    // <input type=checkbox data-enables="#start-button">: the box unlocks that button.
    if (target.hasAttribute("data-enables")) {
      var button = document.querySelector(target.getAttribute("data-enables"));
      if (button) { button.disabled = !target.checked; }
      return;
    }
    // <form data-clear-on-change="#preflight">: a changed choice makes the old result stale.
    var form = target.closest("form[data-clear-on-change]");
    if (form) {
      var stale = document.querySelector(form.getAttribute("data-clear-on-change"));
      if (stale) { stale.innerHTML = ""; }
    }
  });

  // <button data-close-dialog>: remove the dialog it sits in (htmx swapped it in).
  document.addEventListener("click", function (event) {
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) {
      var dialog = closer.closest("dialog");
      if (dialog) { dialog.remove(); }
    }
  });
})();
