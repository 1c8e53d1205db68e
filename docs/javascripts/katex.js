// Render the formulas that pymdownx.arithmatex (generic mode) leaves in the page: inline math as
// <span class="arithmatex">\(...\)</span>, display math as <div class="arithmatex">\[...\]</div>.
// Only those elements are touched, so a dollar sign in prose or code is never taken for math.
(function () {
  "use strict";
  function render(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.katexDone) return;
      var tex = el.textContent.trim();
      var display = el.tagName !== "SPAN";
      var m = tex.match(/^\\\(([\s\S]*)\\\)$/) || tex.match(/^\\\[([\s\S]*)\\\]$/) || tex.match(/^\$\$([\s\S]*)\$\$$/);
      if (m) tex = m[1];
      katex.render(tex, el, { displayMode: display, throwOnError: false });
      el.dataset.katexDone = "1";
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });  // mkdocs-material: every page load
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
