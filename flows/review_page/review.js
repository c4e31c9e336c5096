// stemloop review page: synced A/B playback over one waveform, a loop region, marks that
// become guidance for the next run. Data comes from the page's #review-data JSON.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const colours = {selected: "rgba(60, 120, 200, 0.25)", target: "rgba(40, 160, 80, 0.35)",
                   complement: "rgba(230, 150, 20, 0.35)", exclude: "rgba(210, 40, 40, 0.35)",
                   steered: "rgba(120, 120, 120, 0.2)"};
  const words = {target: data.target + " is clean here",
                 complement: "no " + data.target + " here", exclude: "leak here"};

  // one media element per source, all the same length: switching keeps the moment
  const audios = data.sources.map(function (s) {
    const a = document.createElement("audio");
    a.preload = "auto";
    a.src = s.src;
    return a;
  });
  let current = 0, selected = null, looping = false;
  const marks = [];  // {kind, region}

  const regions = WaveSurfer.Regions.create();
  const ws = WaveSurfer.create({container: "#waveform", height: 120, waveColor: "#8a9",
                                progressColor: "#365", cursorColor: "#c00",
                                media: audios[0], url: data.sources[0].src,
                                plugins: [regions]});
  regions.enableDragSelection({color: colours.selected});

  ws.on("ready", function () {
    (data.steered || []).forEach(function (m) {
      regions.addRegion({start: m.start, end: m.end, color: colours.steered, drag: false,
                         resize: false, content: "steered: " + m.kind});
    });
    document.body.dataset.ready = "true";
  });
  ws.on("timeupdate", function (t) {
    document.getElementById("time").textContent = t.toFixed(2) + " s";
  });

  regions.on("region-created", function (region) {
    if (region.content && /^steered/.test(region.content.textContent || "")) return;
    if (selected && !marks.some(function (m) { return m.region === selected; })) {
      selected.remove();  // one unmarked selection at a time
    }
    selected = region;
  });
  regions.on("region-clicked", function (region, e) { e.stopPropagation(); selected = region; });
  regions.on("region-out", function (region) {
    if (looping && region === selected) region.play();
  });

  function switchTo(i) {
    const from = audios[current], to = audios[i];
    const t = from.currentTime, playing = !from.paused;
    from.pause();
    current = i;
    to.currentTime = t;
    ws.setMediaElement(to);
    if (playing) to.play();
    document.querySelectorAll("button.source").forEach(function (b) {
      b.classList.toggle("active", Number(b.dataset.index) === i);
    });
    document.getElementById("playing").textContent = data.sources[i].label;
  }

  function mark(kind) {
    if (!selected) return;
    const region = selected;
    region.setOptions({color: colours[kind], content: words[kind]});
    const existing = marks.find(function (m) { return m.region === region; });
    if (existing) existing.kind = kind; else marks.push({kind: kind, region: region});
    selected = null;
    drawMarks();
  }

  function drawMarks() {
    const body = document.querySelector("#marks tbody");
    body.textContent = "";
    marks.forEach(function (m, n) {
      const row = body.insertRow();
      [words[m.kind], m.region.start.toFixed(2), m.region.end.toFixed(2)].forEach(function (v) {
        row.insertCell().textContent = v;
      });
      const drop = document.createElement("button");
      drop.textContent = "remove";
      drop.onclick = function () { m.region.remove(); marks.splice(n, 1); drawMarks(); };
      row.insertCell().appendChild(drop);
    });
  }

  function guidance() {
    return marks.map(function (m) {
      return {kind: m.kind, start: m.region.start, end: m.region.end};
    });
  }

  function yamlText() {  // the file page has no server: the same file, downloaded
    const lines = ["# stemloop guidance from the review of " + data.run_dir,
                   "recording: " + JSON.stringify(data.recording)];
    ["target", "complement", "exclude"].forEach(function (kind) {
      const spans = guidance().filter(function (g) { return g.kind === kind; })
        .map(function (g) { return "[" + g.start.toFixed(3) + ", " + g.end.toFixed(3) + "]"; });
      lines.push(kind + ": [" + spans.join(", ") + "]");
    });
    return lines.join("\n") + "\n";
  }

  function save() {
    const shown = document.getElementById("saved");
    if (!SERVED) {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([yamlText()], {type: "text/yaml"}));
      link.download = "guidance.yaml";
      link.click();
      shown.textContent = "downloaded guidance.yaml: stemloop adapt " + data.recording +
        " --guidance guidance.yaml";
      return Promise.resolve(null);
    }
    return fetch("guidance", {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify({marks: guidance()})})
      .then(function (r) { return r.json(); })
      .then(function (answer) {
        shown.textContent = answer.error ? "not saved: " + answer.error :
          "saved " + answer.path + "; next: stemloop adapt " + data.recording +
          " --guidance " + answer.path;
        shown.dataset.path = answer.path || "";
        return answer;
      });
  }

  document.querySelectorAll("button.source").forEach(function (b) {
    b.addEventListener("click", function () { switchTo(Number(b.dataset.index)); });
  });
  document.querySelectorAll("button.mark").forEach(function (b) {
    b.addEventListener("click", function () { mark(b.dataset.kind); });
  });
  document.getElementById("play").addEventListener("click", function () { ws.playPause(); });
  document.getElementById("loop").addEventListener("change", function (e) {
    looping = e.target.checked;
    if (looping && selected) selected.play();
  });
  document.getElementById("save").addEventListener("click", save);
  switchTo(0);

  // for people at the console and for the browser test
  window.review = {ws: ws, regions: regions, audios: audios, switchTo: switchTo, mark: mark,
                   save: save, guidance: guidance,
                   current: function () { return current; },
                   selected: function () { return selected; }};
})();
