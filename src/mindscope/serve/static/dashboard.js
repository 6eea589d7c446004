// mindscope dashboard: the few things htmx does not do. No network beyond this server.
(function () {
  "use strict";
  const errorBox = () => document.getElementById("error");

  // a new request clears the last error; the server's one-line errors are swapped into #error by htmx
  document.addEventListener("htmx:beforeRequest", () => { const e = errorBox(); if (e) e.innerHTML = ""; });
  document.addEventListener("htmx:sendError", () => showError("the dashboard does not answer: is 'mindscope serve' still running?"));
  // a value the browser itself refuses (outside an input's min/max) is said, not silently dropped
  document.addEventListener("htmx:validation:failed", (event) => {
    const input = event.detail.elt;
    showError(`${input.name}: ${input.validationMessage}`);
  });

  function showError(text) {
    const e = errorBox();
    if (!e) return;
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = text;
    e.replaceChildren(p);
  }

  // sliders show their value (the alpha slider its alpha, from the tick labels)
  document.addEventListener("input", (event) => {
    const input = event.target;
    if (input.type !== "range") return;
    const out = input.parentElement.querySelector("output");
    if (!out) return;
    const tick = input.list ? input.list.querySelector(`option[value="${input.value}"]`) : null;
    out.textContent = tick ? tick.label : input.value;
  });

  // the play button steps a range input through its values, one step per second
  function showValue(range) {
    const out = range.parentElement.querySelector("output");
    if (out) out.textContent = range.value;
  }
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.play");
    if (!button) return;
    const range = button.form.elements[button.dataset.range];
    const stop = () => {
      clearInterval(Number(button.dataset.timer));
      delete button.dataset.timer;
      button.textContent = "▶ play";
    };
    if (button.dataset.timer) { stop(); return; }
    const show = () => { showValue(range); range.dispatchEvent(new Event("change", { bubbles: true })); };
    const step = () => {
      if (!document.body.contains(range) || Number(range.value) >= Number(range.max)) { stop(); return; }
      range.value = String(Number(range.value) + 1);
      show();
    };
    if (Number(range.value) >= Number(range.max)) { range.value = range.min; show(); } else { step(); }
    button.dataset.timer = String(setInterval(step, 1000));
    button.textContent = "❚❚ pause";
  });

  // an upload: the file's bytes as the request body; the answer names the page that shows it
  document.addEventListener("change", async (event) => {
    const input = event.target;
    if (input.id !== "upload" || !input.files.length) return;
    const file = input.files[0];
    const response = await fetch(input.dataset.url, { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    const text = await response.text();
    if (!response.ok) { showError(text.trim()); return; }
    const answer = JSON.parse(text);
    htmx.ajax("GET", answer.page, { target: "#app", select: "#app", swap: "outerHTML" }).then(() => history.pushState({}, "", answer.page));
  });
})();
