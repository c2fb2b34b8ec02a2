// Attribution explorer of the one-file report: pick an example, a method and a layer; the tokens
// are coloured by score (one colour scale per example and method, across all its layers and
// tokens, optionally leaving special tokens such as [CLS] out of the scale) and the numbers are
// shown on hover. Data comes from <script id="explorer-data">; every
// string is written with textContent, never parsed as HTML.
(function () {
  "use strict";
  var source = document.getElementById("explorer-data");
  if (!source) { return; }
  var data = JSON.parse(source.textContent);
  var byId = function (id) { return document.getElementById(id); };
  var exampleSelect = byId("explorer-example"), methodSelect = byId("explorer-method"),
      layerSelect = byId("explorer-layer"), tokensBox = byId("explorer-tokens"), info = byId("explorer-info"),
      detail = byId("explorer-detail"), legendBar = byId("explorer-legend-bar"),
      legendLow = byId("explorer-legend-low"), legendHigh = byId("explorer-legend-high"),
      layersTable = byId("explorer-layers"), specialBox = byId("explorer-special"),
      outcomeBox = byId("explorer-outcome"), warning = byId("explorer-warning");
  // light-to-dark sequential map (non-negative scores) and a blue-white-red diverging map
  var SEQUENTIAL = [[255, 247, 236], [254, 217, 166], [253, 174, 97], [236, 112, 20], [178, 55, 5], [102, 30, 4]];
  var DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

  function option(select, value, text) {
    var element = document.createElement("option");
    element.value = String(value);
    element.textContent = text;
    select.appendChild(element);
  }
  function clearChildren(element) { while (element.firstChild) { element.removeChild(element.firstChild); } }
  function interpolate(stops, t) {
    t = Math.min(1, Math.max(0, t));
    var x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    var c = [0, 1, 2].map(function (k) { return Math.round(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])); });
    return c;
  }
  function css(c) { return "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")"; }
  function gradient(stops) { return "linear-gradient(to right, " + stops.map(css).join(", ") + ")"; }
  function format(value) { return Number(value).toPrecision(4); }

  function scale(rows, skip) {
    var low = Infinity, high = -Infinity;
    rows.forEach(function (row) {
      row.forEach(function (v, i) { if (!skip[i]) { low = Math.min(low, v); high = Math.max(high, v); } });
    });
    if (low === Infinity) { low = 0; high = 1; }
    if (low < 0) {
      var limit = Math.max(-low, high) || 1;
      return { diverging: true, low: -limit, high: limit,
               colour: function (v) { return interpolate(DIVERGING, 0.5 + v / (2 * limit)); } };
    }
    var top = high > 0 ? high : 1;
    return { diverging: false, low: 0, high: top, colour: function (v) { return interpolate(SEQUENTIAL, v / top); } };
  }
  function paint(element, colour) {
    element.style.backgroundColor = css(colour);
    var light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2];
    element.style.color = light < 140 ? "#ffffff" : "#111111";
  }

  function current() {
    var example = data.examples[Number(exampleSelect.value)];
    var method = data.methods[Number(methodSelect.value)];
    return { example: example, method: method, rows: example.scores[method.key], layer: Number(layerSelect.value) };
  }
  function fillLayers() {
    var method = data.methods[Number(methodSelect.value)], previous = layerSelect.value;
    clearChildren(layerSelect);
    method.layers.forEach(function (name, index) { option(layerSelect, index, name); });
    var last = method.layers.length - 1;
    layerSelect.value = String(previous !== "" && Number(previous) <= last ? previous : last);
    layerSelect.disabled = method.layers.length < 2;
  }
  function describe(state, layer, index) {
    var value = state.rows[layer][index];
    return state.method.label + " · " + state.method.layers[layer] + " · token " + (index + 1) + " " +
      JSON.stringify(state.example.raw[index]) + ": " + format(value);
  }
  // "predicted X (p=0.970), gold Y" of a classified example; "" when there is no prediction
  function outcome(example) {
    if (example.prediction === null || example.prediction === undefined) { return ""; }
    var text = "predicted " + example.prediction;
    if (example.probability !== null && example.probability !== undefined) {
      text += " (p=" + Number(example.probability).toFixed(3) + ")";
    }
    if (example.gold !== null && example.gold !== undefined) { text += ", gold " + example.gold; }
    return text;
  }
  function render() {
    var state = current(), example = state.example, rows = state.rows, excluding = specialBox.checked;
    var s = scale(rows, example.special.map(function (special) { return excluding && special; }));
    info.textContent = example.info || "";
    if (outcomeBox) { outcomeBox.textContent = outcome(example); }
    if (warning) {
      warning.hidden = example.correct !== false;
      warning.textContent = example.correct === false ? "\u26a0 The model gets this example wrong (" + outcome(example) +
        "): the scores below explain its wrong prediction." : "";
    }
    clearChildren(tokensBox);
    example.tokens.forEach(function (text, index) {
      if (index > 0 && example.space[index]) { tokensBox.appendChild(document.createTextNode(" ")); }
      var span = document.createElement("span");
      span.className = "tok";
      span.tabIndex = 0;
      span.textContent = text;
      span.title = describe(state, state.layer, index);
      span.setAttribute("data-score", String(rows[state.layer][index]));
      paint(span, s.colour(rows[state.layer][index]));
      var show = function () { detail.textContent = span.title; };
      span.addEventListener("mouseenter", show);
      span.addEventListener("focus", show);
      tokensBox.appendChild(span);
    });
    detail.textContent = "";
    legendBar.style.background = gradient(s.diverging ? DIVERGING : SEQUENTIAL);
    legendLow.textContent = format(s.low);
    legendHigh.textContent = format(s.high) + (s.diverging ? "" : " (largest score of this method in this example" +
      (excluding ? ", special tokens left out; larger scores get the darkest colour)" : ")"));
    clearChildren(layersTable);
    for (var layer = rows.length - 1; layer >= 0; layer--) {
      var tr = document.createElement("tr");
      if (layer === state.layer) { tr.className = "selected"; }
      var th = document.createElement("th");
      th.textContent = state.method.layers[layer];
      tr.appendChild(th);
      rows[layer].forEach(function (value, index) {
        var td = document.createElement("td");
        td.textContent = example.tokens[index];
        td.title = describe(state, layer, index);
        paint(td, s.colour(value));
        tr.appendChild(td);
      });
      layersTable.appendChild(tr);
    }
  }

  data.examples.forEach(function (example, index) {
    option(exampleSelect, index, (index + 1) + ". " + (example.correct === false ? "\u2717 wrong: " : "") + example.title);
  });
  exampleSelect.value = String(data["default"] || 0);
  data.methods.forEach(function (method, index) { option(methodSelect, index, method.label); });
  exampleSelect.addEventListener("change", render);
  methodSelect.addEventListener("change", function () { fillLayers(); render(); });
  layerSelect.addEventListener("change", render);
  specialBox.addEventListener("change", render);
  fillLayers();
  render();
})();
