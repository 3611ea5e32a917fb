// s2lc map viewer: Leaflet over the viewer's own tile and JSON endpoints (no other network).
'use strict';

(function () {
  const state = {
    meta: null,
    map: null,
    layers: {},        // name -> L.TileLayer
    alpha: {},         // class value -> opacity 0..1
    query: null,       // last query stats {id, text, vmin, vmax, ...}
    loading: 0,        // tile layers currently loading
  };
  // Exposed for tests and for the console: whether every visible layer has finished loading.
  window.s2lcView = {
    state: state,
    idle: () => state.meta !== null && state.loading === 0,
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    kids.forEach((k) => e.appendChild(k));
    return e;
  };
  const pct = (x) => (x === null || x === undefined ? '–' : (100 * x).toFixed(1) + ' %');

  function track(layer) {
    let busy = false;
    layer.on('loading', () => { if (!busy) { busy = true; state.loading++; } });
    layer.on('load remove', () => { if (busy) { busy = false; state.loading--; } });
    return layer;
  }

  function tileLayer(url, zIndex) {
    const m = state.meta;
    const b = m.bounds;
    return track(L.tileLayer(url, {
      bounds: L.latLngBounds([b[1], b[0]], [b[3], b[2]]),
      minZoom: 0,
      maxZoom: m.maxzoom + 4,
      zIndex: zIndex,
      keepBuffer: 1,
    }));
  }

  function classesUrl() {
    const a = state.meta.classes.map((c) => state.alpha[c.value]);
    const n = Math.max(...state.meta.classes.map((c) => c.value)) + 1;
    const list = Array.from({ length: n }, (_, i) => {
      const c = state.meta.classes.find((k) => k.value === i);
      return c ? String(state.alpha[i]) : '0';
    });
    const visible = a.every((v) => v === 1) ? '' : '?alpha=' + list.join(',');
    return '/tiles/classes/{z}/{x}/{y}.png' + visible;
  }

  function refreshClasses() {
    state.layers.classes.setUrl(classesUrl());
  }

  function layerRow(name, label, on, opacity, ramp) {
    const layer = state.layers[name];
    layer.setOpacity(opacity);
    if (on) layer.addTo(state.map);
    const box = el('input', { type: 'checkbox', id: 'layer-' + name });
    box.checked = on;
    box.addEventListener('change', () => {
      if (box.checked) layer.addTo(state.map); else state.map.removeLayer(layer);
    });
    const slider = el('input', { type: 'range', min: 0, max: 100, value: Math.round(opacity * 100),
      id: 'opacity-' + name, title: 'opacity' });
    slider.addEventListener('input', () => layer.setOpacity(slider.value / 100));
    const row = el('div', { class: 'row' }, box, el('label', { for: 'layer-' + name, text: label }));
    if (ramp) row.appendChild(el('span', { class: 'ramp ' + ramp, style: 'max-width:40px' }));
    row.appendChild(slider);
    $('layers').appendChild(row);
  }

  function buildLegend() {
    const body = $('legend').querySelector('tbody');
    for (const c of state.meta.classes) {
      state.alpha[c.value] = 1;
      const box = el('input', { type: 'checkbox', 'data-class': c.value, title: 'show ' + c.name });
      box.checked = true;
      const slider = el('input', { type: 'range', min: 0, max: 100, value: 100,
        'data-class-opacity': c.value, title: 'opacity of ' + c.name });
      box.addEventListener('change', () => {
        state.alpha[c.value] = box.checked ? slider.value / 100 : 0;
        refreshClasses();
      });
      slider.addEventListener('change', () => {
        if (box.checked) { state.alpha[c.value] = slider.value / 100; refreshClasses(); }
      });
      body.appendChild(el('tr', { 'data-value': c.value },
        el('td', {}, box),
        el('td', {}, el('span', { class: 'swatch', style: 'background:' + c.color })),
        el('td', { text: c.name }),
        el('td', { class: 'share', text: pct(c.share) }),
        el('td', {}, slider)));
    }
    $('share-note').textContent = state.meta.shares_exact ? '(share of mapped area)'
      : '(share of mapped area, from a sample)';
    const setAll = (on) => () => {
      body.querySelectorAll('input[type=checkbox]').forEach((b) => {
        if (b.checked !== on) { b.checked = on; }
        const v = Number(b.dataset.class);
        const s = body.querySelector(`input[data-class-opacity="${v}"]`);
        state.alpha[v] = on ? s.value / 100 : 0;
      });
      refreshClasses();
    };
    $('all-on').addEventListener('click', setAll(true));
    $('all-off').addEventListener('click', setAll(false));
  }

  function setupQuery() {
    const q = state.meta.query;
    const input = $('query-text'), run = $('query-run'), kind = $('query-kind');
    (q.kinds.length ? q.kinds : ['similarity']).forEach((k) => kind.appendChild(el('option', { value: k, text: k })));
    if (!q.available) {
      [input, run, kind].forEach((e) => { e.disabled = true; });
      input.placeholder = 'no embedding field';
      $('query-status').textContent = q.reason;
      return;
    }
    $('query-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      run.disabled = true;
      $('query-status').textContent = 'querying…';
      const t0 = performance.now();
      try {
        const r = await fetch('/api/query', { method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ text: text, kind: kind.value }) });
        const res = await r.json();
        if (!r.ok) throw new Error(res.error || r.statusText);
        state.query = res;
        if (state.layers.query) state.map.removeLayer(state.layers.query);
        state.layers.query = tileLayer('/tiles/query/' + res.id + '/{z}/{x}/{y}.png', 40);
        state.layers.query.setOpacity(0.85);
        state.layers.query.once('load', () => {
          const s = ((performance.now() - t0) / 1000).toFixed(2);
          $('query-status').textContent = `"${res.text}" (${res.kind}): heat map shown in ${s} s ` +
            `(text ${res.seconds.toFixed(2)} s; each tile computed from the field when first shown)`;
          $('query-status').dataset.seconds = s;
        });
        state.layers.query.addTo(state.map);
        $('query-vmin').textContent = res.vmin.toFixed(3);
        $('query-vmax').textContent = res.vmax.toFixed(3);
        $('query-ramp').hidden = false;
        $('query-status').textContent = `"${res.text}": loading tiles…`;
      } catch (e) {
        $('query-status').textContent = 'query failed: ' + e.message;
      } finally {
        run.disabled = false;
      }
    });
  }

  async function showPixel(ev) {
    const ll = ev.latlng;
    let url = `/api/pixel?lon=${ll.lng}&lat=${ll.lat}`;
    if (state.query) url += '&query=' + encodeURIComponent(state.query.id);
    const res = await (await fetch(url)).json();
    const box = $('pixel');
    box.innerHTML = '';
    box.appendChild(el('div', { text: `${ll.lat.toFixed(5)}° N, ${ll.lng.toFixed(5)}° E` }));
    if (!res.topk.length) {
      box.appendChild(el('div', { text: 'no data here' }));
    } else {
      const t = el('table', { id: 'topk' });
      res.topk.forEach((k, i) => t.appendChild(el('tr', {},
        el('td', { text: String(i + 1) + '.' }),
        el('td', {}, el('span', { class: 'swatch', style: 'background:' + k.color })),
        el('td', { text: k.name }),
        el('td', { text: k.prob === null ? '–' : pct(k.prob) }))));
      box.appendChild(t);
    }
    const extra = [];
    if ('confidence' in res) extra.push('confidence ' + (res.confidence === null ? '–' : pct(res.confidence)));
    if ('valid_obs' in res) extra.push('clear observations ' + (res.valid_obs === null ? '–' : res.valid_obs));
    for (const r of (state.meta.ramps || [])) {
      if (r.name in res) extra.push(r.name + ' ' + (res[r.name] === null ? '–' : res[r.name]));
    }
    if (res.query) extra.push(`"${res.query.text}" ` + (res.query.score === null ? '–' : res.query.score.toFixed(3)));
    extra.forEach((x) => box.appendChild(el('div', { text: x })));
    L.popup().setLatLng(ll).setContent(box.innerHTML).openOn(state.map);
  }

  async function main() {
    const m = await (await fetch('/api/meta')).json();
    $('title').textContent = m.title;
    document.title = m.title + ' – s2lc';
    if (m.warning) { $('warning').textContent = m.warning; $('warning').hidden = false; }
    state.map = L.map('map', { zoomControl: true, attributionControl: false });
    const b = m.bounds;
    state.map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
    L.control.scale({ imperial: false }).addTo(state.map);
    state.meta = m;
    const L_ = m.layers;
    if (L_.rgb) state.layers.rgb = tileLayer('/tiles/rgb/{z}/{x}/{y}.png', 10);
    if (L_.valid_obs) state.layers.valid_obs = tileLayer('/tiles/valid_obs/{z}/{x}/{y}.png', 20);
    if (L_.confidence) state.layers.confidence = tileLayer('/tiles/confidence/{z}/{x}/{y}.png', 25);
    buildLegend();
    state.layers.classes = tileLayer(classesUrl(), 30);
    layerRow('classes', 'Classes', true, 0.8);
    if (L_.confidence) layerRow('confidence', 'Confidence (0–1)', false, 0.9, 'viridis');
    if (L_.valid_obs) layerRow('valid_obs', `Clear observations (0–${m.valid_obs_max})`, false, 0.9, 'cividis');
    for (const r of (m.ramps || [])) {
      state.layers[r.name] = tileLayer('/tiles/' + r.name + '/{z}/{x}/{y}.png', 24);
      layerRow(r.name, r.label, false, 0.9, r.ramp);
    }
    if (L_.rgb) layerRow('rgb', 'True colour (composite)', true, 1.0);
    setupQuery();
    state.map.on('click', showPixel);
  }

  main().catch((e) => {
    $('warning').textContent = 'could not load the map: ' + e.message;
    $('warning').hidden = false;
  });
}());
