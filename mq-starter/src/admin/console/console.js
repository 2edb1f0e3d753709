// Shows the application's health; the full console replaces this file.
"use strict";
(async () => {
  const status = document.getElementById("status");
  const token = sessionStorage.getItem("mq.admin.token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const answer = await fetch("api/health", { headers });
  status.textContent = answer.status === 401 ? "unauthorized" : (await answer.json()).status;
})();
