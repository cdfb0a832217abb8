"use strict";
(function () {
  const root = document.getElementById("app");
  const modalities = JSON.parse(root.dataset.modalities);
  const files = {};
  const button = document.getElementById("predict");
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const explanation = document.getElementById("explanation");

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  function ready() {
    return modalities.every(function (m) { return files[m]; });
  }

  function choose(modality, file, zone) {
    if (!file) return;
    files[modality] = file;
    zone.classList.add("filled");
    zone.querySelector(".hint").textContent = "File chosen (" + Math.round(file.size / 1024) + " kB)";
    button.disabled = !ready();
    if (modalities.length === 1) run();
  }

  document.querySelectorAll(".drop").forEach(function (zone) {
    const modality = zone.dataset.modality;
    const input = zone.querySelector("input");
    input.addEventListener("change", function () { choose(modality, input.files[0], zone); });
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      choose(modality, event.dataTransfer.files[0], zone);
    });
  });
  button.addEventListener("click", run);

  function form() {
    const data = new FormData();
    modalities.forEach(function (m) { data.append(m, files[m], "upload"); });
    return data;
  }

  async function post(url) {
    const response = await fetch(url, { method: "POST", body: form() });
    const body = await response.json().catch(function () { return {}; });
    if (!response.ok) throw new Error(body.detail || ("the server answered " + response.status));
    return body;
  }

  function verdict(entry, calibrated) {
    if (!calibrated) {
      return element("div", "verdict unknown",
        "This model has not been calibrated: no referral advice. Review every case.");
    }
    if (entry.refer) {
      const why = entry.refer_reasons.join(", and ");
      return element("div", "verdict refer",
        "Uncertain: refer to a specialist. " + why.charAt(0).toUpperCase() + why.slice(1) + ".");
    }
    return element("div", "verdict confident",
      "Confident: " + percent(entry.confidence) + " is above the referral threshold" +
      (entry.referral_threshold === null ? "" : " of " + percent(entry.referral_threshold)) +
      ", and the prediction set holds this one class.");
  }

  function showTask(task, entry, answer) {
    const box = element("section", "card task");
    box.appendChild(element("h2", "", "Task: " + task));
    box.appendChild(element("div", "prediction", entry.predicted + " (" + percent(entry.confidence) + ")"));
    box.appendChild(verdict(entry, answer.calibrated));
    const bars = element("ul", "bars");
    Object.keys(entry.probabilities).forEach(function (name) {
      const p = entry.probabilities[name];
      const row = element("li", name === entry.predicted ? "top" : "");
      row.appendChild(element("span", "", name));
      const bar = element("div", "bar");
      const fill = element("span");
      fill.style.width = (100 * p).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(element("span", "num", percent(p)));
      bars.appendChild(row);
    });
    box.appendChild(bars);
    if (entry.conformal_set !== null) {
      const coverage = Math.round(100 * entry.conformal_coverage);
      box.appendChild(element("p", "",
        coverage + "% prediction set (conformal): " +
        (entry.conformal_set.length ? "{" + entry.conformal_set.join(", ") + "}" : "empty (no class is probable enough)")));
    }
    box.appendChild(element("p", "details",
      "Predictive entropy " + entry.predictive_entropy.toFixed(3) + " nats; mutual information " +
      entry.mutual_information.toFixed(3) + " nats (disagreement between " + answer.mc_samples +
      " MC-dropout samples). Model " + answer.model + " (dualfuse " + answer.version + "), weights " +
      answer.weights_sha256 + "."));
    results.appendChild(box);
  }

  function showExplanation(cams) {
    explanation.replaceChildren();
    explanation.appendChild(element("h2", "", "Where the model looked (Grad-CAM for \u201c" + cams.explained_class + "\u201d)"));
    const row = element("div", "figures");
    cams.maps.forEach(function (item) {
      [["image_png", "Image as the model saw it (" + item.modality + ")"],
       ["overlay_png", "Grad-CAM overlay: red areas weighed most for \u201c" + cams.explained_class + "\u201d"]]
        .forEach(function (pair) {
          const figure = element("figure");
          const image = element("img");
          image.alt = pair[1];
          image.className = pair[0] === "overlay_png" ? "overlay" : "input";
          image.src = "data:image/png;base64," + item[pair[0]];
          figure.appendChild(image);
          figure.appendChild(element("figcaption", "", pair[1]));
          row.appendChild(figure);
        });
    });
    explanation.appendChild(row);
    explanation.classList.remove("hidden");
  }

  async function run() {
    if (!ready()) return;
    button.disabled = true;
    results.replaceChildren();
    explanation.classList.add("hidden");
    say("Predicting\u2026", false);
    try {
      const answer = await post("predict");
      Object.keys(answer.tasks).forEach(function (task) { showTask(task, answer.tasks[task], answer); });
      say("Computing the Grad-CAM overlay\u2026", false);
      const first = Object.keys(answer.tasks)[0];
      const query = "explain?task=" + encodeURIComponent(first) +
        "&target_class=" + encodeURIComponent(answer.tasks[first].predicted);
      showExplanation(await post(query));
      say("Done.", false);
      root.dataset.state = "done";
    } catch (error) {
      say(error.message, true);
      root.dataset.state = "error";
    } finally {
      button.disabled = !ready();
    }
  }
})();
