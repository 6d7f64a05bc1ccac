// Automatic logoff on screen (45 CFR 164.312(a)(2)(iii)): once the idle timeout has passed
// without a page load, leave the page so patient data does not stay on an unattended
// screen. The server ends the session on its own clock as well.
(function () {
  "use strict";
  var idle = Number(document.body.getAttribute("data-idle-seconds") || "0");
  if (!idle || !document.body.hasAttribute("data-signed-in")) {
    return;
  }
  window.setTimeout(function () {
    window.location.assign("/audit/login?ended=idle");
  }, idle * 1000 + 1000);
})();
