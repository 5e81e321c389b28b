// tollgate billing page: the history chart (Chart.js, vendored) and budget bars.
// Amounts arrive as integer nano-USD; they become dollars here for plotting only.
(function () {
  "use strict";
  var PALETTE = ["#4f46e5", "#06b6d4", "#f59e0b", "#10b981", "#ec4899", "#8b5cf6", "#64748b", "#ef4444"];
  var NANOS = 1e9;

  function centsOf(nanos) {  // integer nanos -> integer cents, half-up (exact below 2^53 nanos)
    return Math.floor((nanos + 5000000) / 10000000);
  }
  function usdNanos(nanos) {
    var cents = centsOf(nanos), whole = Math.floor(cents / 100), frac = cents % 100;
    return "$" + whole.toLocaleString("en-US") + "." + (frac < 10 ? "0" : "") + frac;
  }
  function usd(value) {
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  document.querySelectorAll(".meter-fill[data-bp]").forEach(function (el) {
    el.style.width = (Number(el.getAttribute("data-bp")) / 100) + "%";
  });

  var select = document.getElementById("period");
  if (select) {
    select.addEventListener("change", function () { document.getElementById("period-form").submit(); });
  }

  var dataEl = document.getElementById("history-data");
  var canvas = document.getElementById("history-chart");
  if (!dataEl || !canvas || typeof Chart === "undefined") { return; }
  var history = JSON.parse(dataEl.textContent);
  var colors = {};
  var datasets = history.providers.map(function (p, i) {
    colors[p.name] = p.name === "tollgate" ? "#94a3b8" : PALETTE[i % PALETTE.length];
    return {
      label: p.label,
      data: p.cost_nanos.map(function (n) { return n / NANOS; }),
      costNanos: p.cost_nanos,
      backgroundColor: colors[p.name],
      borderRadius: 4,
      borderSkipped: false,
      maxBarThickness: 44,
      stack: "cost"
    };
  });
  document.querySelectorAll("[data-provider-dot]").forEach(function (el) {
    var c = colors[el.getAttribute("data-provider-dot")];
    if (c) { el.style.background = c; }
  });

  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#6b7280";
  window.tollgateHistoryChart = new Chart(canvas, {
    type: "bar",
    data: { labels: history.labels, datasets: datasets },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { stacked: true, grid: { display: false }, border: { display: false } },
        y: {
          stacked: true, beginAtZero: true, border: { display: false },
          grid: { color: "#eef0f4" },
          ticks: { callback: function (v) { return usd(v); }, maxTicksLimit: 6 }
        }
      },
      plugins: {
        legend: { position: "bottom", labels: { usePointStyle: true, pointStyle: "rectRounded", boxWidth: 8, padding: 16 } },
        tooltip: {
          callbacks: {
            label: function (ctx) { return " " + ctx.dataset.label + ": " + usdNanos(ctx.dataset.costNanos[ctx.dataIndex]); }
          }
        }
      }
    }
  });
})();
