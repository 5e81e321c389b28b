// tollgate billing page: the history chart (Chart.js, vendored) and budget bars.
// Amounts arrive as integer nano-USD (plotted as dollars) and as cents rounded on the server (shown).
(function () {
  "use strict";
  // integer cents (already rounded on the server so providers add up to the month's total) -> "$1,234.56"
  function usdCents(cents, nanos) {
    if (cents === 0 && nanos) { return nanos < 0 ? "-<$0.01" : "<$0.01"; }
    var a = Math.abs(cents), whole = Math.floor(a / 100), frac = a % 100;
    return (cents < 0 ? "-" : "") + "$" + whole.toLocaleString("en-US") + "." + (frac < 10 ? "0" : "") + frac;
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

  // provider colours come from the server (worker.billing.report.provider_color): the same in every view
  document.querySelectorAll("[data-provider-dot][data-color]").forEach(function (el) {
    el.style.background = el.getAttribute("data-color");
  });

  // back from Stripe Checkout before its webhook landed: reload every 3 s (for a minute) until the
  // server shows the credit
  var pending = document.querySelector("[data-testid=topup-banner][data-state=pending]");
  var WAIT = "tollgate-topup-wait";
  try {
    if (pending) {
      var tries = Number(window.sessionStorage.getItem(WAIT) || 0);
      if (tries < 20) {
        window.sessionStorage.setItem(WAIT, String(tries + 1));
        window.setTimeout(function () { window.location.reload(); }, 3000);
      }
    } else {
      window.sessionStorage.removeItem(WAIT);
    }
  } catch (e) { /* storage disabled: no automatic reload */ }

  var dataEl = document.getElementById("history-data");
  var canvas = document.getElementById("history-chart");
  if (!dataEl || !canvas || typeof Chart === "undefined") { return; }
  var history = JSON.parse(dataEl.textContent);
  var NANOS = 1e9;
  // the current month is the month to date: its label says so (its colours stay the providers')
  var mtd = history.periods.indexOf(history.current);
  var labels = history.labels.map(function (l, i) { return i === mtd ? [l, "to date"] : l; });
  var datasets = history.providers.map(function (p) {
    return {
      label: p.label,
      data: p.cost_nanos.map(function (n) { return n / NANOS; }),
      costNanos: p.cost_nanos,
      cents: p.cents,
      backgroundColor: p.color,
      borderRadius: 4,
      borderSkipped: false,
      maxBarThickness: 44,
      stack: "cost"
    };
  });

  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#6b7280";
  window.tollgateHistoryChart = new Chart(canvas, {
    type: "bar",
    data: { labels: labels, datasets: datasets },
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
            label: function (ctx) {
              return " " + ctx.dataset.label + ": " + usdCents(ctx.dataset.cents[ctx.dataIndex], ctx.dataset.costNanos[ctx.dataIndex]);
            },
            footer: function (items) {
              return items.length ? "Total: " + usdCents(history.total_cents[items[0].dataIndex], 0) : "";
            }
          }
        }
      }
    }
  });
})();
