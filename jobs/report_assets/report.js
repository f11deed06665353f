// sdfleet report: a static page over data/*.js (written by `sdfleet report`).
// Rows are filtered on dictionary codes (SDF_INDEX.columns[name] = {values, codes}); a page
// shows at most page_size cards; a row's full parameters come from data/detail-BUILD-NNNN.js, loaded
// when it is opened. The view (tab, filters, page, grid axes) lives in the URL's hash.
(function () {
  'use strict';
  var S = window.SDF_SUMMARY || {};
  var I = window.SDF_INDEX || { n: 0, columns: {}, output_id: [], thumb: [], src: [] };
  var CLIPS = window.SDF_CLIPS || [];
  var COLS = I.columns || {};
  var MAX_CHOICES = 200;
  var state = { tab: '', f: {}, q: '', group: '', page: 0, x: '', y: '', z: '' };
  var details = {};
  var pending = {};

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') node.textContent = attrs[k];
      else if (k === 'on') Object.keys(attrs.on).forEach(function (e) { node.addEventListener(e, attrs.on[e]); });
      else if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function fmt(v) { return v === null || v === undefined ? '' : String(v); }
  function thumbUrl(name) { return 'thumbs/' + encodeURIComponent(name) + '.jpg'; }
  function outUrl(rel) {
    return (S.out ? S.out + '/' : '') + rel.split('/').map(encodeURIComponent).join('/');
  }
  function img(src, alt) {
    var node = el('img', { src: src, alt: alt });
    node.addEventListener('load', function () { if (node.naturalWidth < 96) node.classList.add('pixelated'); });
    return node;
  }

  // ------------------------------------------------------------------ state in the hash
  function readHash() {
    try {
      var saved = JSON.parse(decodeURIComponent(location.hash.slice(1)) || '{}');
      Object.keys(state).forEach(function (k) { if (k in saved) state[k] = saved[k]; });
    } catch (e) { /* a hand-edited hash: start from the defaults */ }
  }
  function writeHash() { history.replaceState(null, '', '#' + encodeURIComponent(JSON.stringify(state))); }
  // a link or a hand-edited address with another view (replaceState fires no hashchange)
  window.addEventListener('hashchange', function () { readHash(); renderControls(); update(); });

  // ------------------------------------------------------------------ rows
  function value(name, i) {
    var col = COLS[name];
    if (!col) return null;
    var code = col.codes[i];
    return code < 0 ? null : col.values[code];
  }
  function choiceColumns() {
    return Object.keys(COLS).filter(function (name) {
      var n = COLS[name].values.length;
      return name !== 'prompt' && name !== 'error' && n >= 2 && n <= MAX_CHOICES;
    });
  }
  var promptLower = null;
  function filtered() {
    var names = Object.keys(state.f).filter(function (k) { return COLS[k]; });
    var q = (state.q || '').toLowerCase();
    if (q && !promptLower && COLS.prompt) promptLower = COLS.prompt.values.map(function (p) { return fmt(p).toLowerCase(); });
    var rows = [];
    for (var i = 0; i < I.n; i++) {
      var ok = true;
      for (var k = 0; k < names.length && ok; k++) ok = COLS[names[k]].codes[i] === state.f[names[k]];
      if (ok && q) {
        var code = COLS.prompt ? COLS.prompt.codes[i] : -1;
        ok = I.output_id[i].toLowerCase().indexOf(q) >= 0 || (code >= 0 && promptLower[code].indexOf(q) >= 0);
      }
      if (ok) rows.push(i);
    }
    if (state.group && COLS[state.group]) {
      var g = COLS[state.group].codes;
      rows.sort(function (a, b) { return (g[a] - g[b]) || (a - b); });
    }
    return rows;
  }

  // ------------------------------------------------------------------ images tab
  function renderControls() {
    var form = clear($('controls'));
    choiceColumns().forEach(function (name) {
      var select = el('select', { name: name, 'data-filter': name, on: { change: function () {
        if (select.value === '') delete state.f[name]; else state.f[name] = Number(select.value);
        state.page = 0; update();
      } } }, el('option', { value: '', text: 'all (' + COLS[name].values.length + ')' }));
      COLS[name].values.forEach(function (v, code) {
        select.appendChild(el('option', { value: code, text: fmt(v) }));
      });
      select.value = name in state.f ? String(state.f[name]) : '';
      form.appendChild(el('label', {}, name, select));
    });
    var search = el('input', { type: 'search', id: 'search', placeholder: 'id or prompt', value: state.q || '' });
    search.addEventListener('input', function () { state.q = search.value; state.page = 0; update(); });
    form.appendChild(el('label', {}, 'search', search));
    var group = el('select', { id: 'group', on: { change: function () { state.group = group.value; state.page = 0; update(); } } },
      el('option', { value: '', text: 'none' }));
    choiceColumns().forEach(function (name) { group.appendChild(el('option', { value: name, text: name })); });
    group.value = state.group || '';
    form.appendChild(el('label', {}, 'group by', group));
  }

  function card(i) {
    var id = I.output_id[i];
    var status = value('status', i);
    var isError = status !== 'ok';
    var pics = el('div', { class: 'pics' });
    if (isError) pics.appendChild(document.createTextNode(fmt(value('error', i)) || 'error'));
    else {
      if (I.src[i]) {
        pics.appendChild(el('span', { class: 'src-slot', 'data-i': i }, 'source'));
        pics.appendChild(el('span', { class: 'arrow', title: 'source → result', text: '→' }));
      }
      pics.appendChild(I.thumb[i] ? img(thumbUrl(id), id) : el('span', { text: 'no image' }));
    }
    var tags = el('div', { class: 'meta' });
    var tagged = ['mode'].concat(choiceColumns().filter(function (n) {
      return ['mode', 'status', 'seed', 'width', 'height'].indexOf(n) < 0;
    }).slice(0, 4));
    tagged.forEach(function (name) {
      var v = value(name, i);
      if (v !== null && !(name === 'mode' && v === 'txt2img')) tags.appendChild(el('span', { class: 'tag', title: name, text: fmt(v) }));
    });
    var node = el('figure', { class: 'card' + (isError ? ' error' : '') + (I.src[i] ? ' img2img' : ''), 'data-i': i, tabindex: 0,
      on: { click: function () { openDetail(i); } } }, pics, el('figcaption', { text: id }), tags);
    return node;
  }

  function renderGallery() {
    var rows = filtered();
    var size = S.page_size || 100;
    var pages = Math.max(1, Math.ceil(rows.length / size));
    state.page = Math.min(Math.max(0, state.page || 0), pages - 1);
    var shown = rows.slice(state.page * size, (state.page + 1) * size);
    var gallery = clear($('gallery'));
    var groupCol = state.group && COLS[state.group] ? state.group : '';
    var current = null, box = null;
    shown.forEach(function (i) {
      var label = groupCol ? fmt(value(groupCol, i)) : '';
      if (!box || (groupCol && label !== current)) {
        current = label;
        box = el('div', { class: 'cards' });
        gallery.appendChild(groupCol ? el('div', { class: 'group' }, el('h2', { text: groupCol + ': ' + label }), box) : box);
      }
      box.appendChild(card(i));
    });
    if (!shown.length) gallery.appendChild(el('p', { class: 'note', text: 'No rows match the filters.' }));
    ['pager-top', 'pager-bottom'].forEach(function (id) { renderPager($(id), rows.length, pages); });
    fillSources(shown);
  }

  function renderPager(node, count, pages) {
    clear(node);
    function go(p) { return function () { state.page = p; update(); window.scrollTo(0, 0); }; }
    node.appendChild(el('button', { type: 'button', text: '‹ prev', disabled: state.page === 0 ? '' : null, on: { click: go(state.page - 1) } }));
    node.appendChild(el('span', { class: 'count', text: 'page ' + (state.page + 1) + ' of ' + pages + ' · ' + count + ' of ' + I.n + ' images' }));
    node.appendChild(el('button', { type: 'button', text: 'next ›', disabled: state.page >= pages - 1 ? '' : null, on: { click: go(state.page + 1) } }));
  }

  // source thumbnails (img2img) need the detail chunk for their name
  function fillSources(rows) {
    rows.filter(function (i) { return I.src[i]; }).forEach(function (i) {
      withDetail(i, function (row) {
        var slot = document.querySelector('.src-slot[data-i="' + i + '"]');
        if (slot && row.src) slot.parentNode.replaceChild(img(thumbUrl(row.src), 'source of ' + row.output_id), slot);
      });
    });
  }

  // ------------------------------------------------------------------ one row
  function withDetail(i, done) {
    var chunk = Math.floor(i / (I.detail_rows || 500));
    if (details[chunk]) { done(details[chunk][i % (I.detail_rows || 500)]); return; }
    (pending[chunk] = pending[chunk] || []).push(function () { done(details[chunk][i % (I.detail_rows || 500)]); });
    if (pending[chunk].length > 1) return;
    var name = 'data/detail-' + (I.detail_build ? I.detail_build + '-' : '') + ('000' + chunk).slice(-4) + '.js';
    document.body.appendChild(el('script', { src: name }));
  }
  window.SDF_DETAIL = function (chunk, rows) {
    details[chunk] = rows;
    (pending[chunk] || []).forEach(function (f) { f(); });
    delete pending[chunk];
  };

  function openDetail(i) {
    withDetail(i, function (row) {
      var body = clear($('detail-body'));
      body.appendChild(el('h2', { text: row.output_id }));
      var pics = el('div', { class: 'pics' });
      if (row.src) pics.appendChild(el('figure', {}, img(thumbUrl(row.src), 'source'), el('figcaption', { text: 'source (init image)' })));
      if (row.image_path && row.status === 'ok') {
        pics.appendChild(el('figure', {}, el('a', { href: outUrl(row.image_path), target: '_blank' }, img(outUrl(row.image_path), row.output_id)),
          el('figcaption', { text: row.image_path })));
      }
      body.appendChild(pics);
      if (row.error) body.appendChild(el('p', { class: 'bad', text: 'error: ' + row.error }));
      if (row.infotext) {
        var text = el('textarea', { readonly: '', id: 'infotext' });
        text.value = row.infotext;
        var copy = el('button', { type: 'button', text: 'copy infotext', on: { click: function () {
          text.select();
          if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text.value);
          else document.execCommand('copy');
          copy.textContent = 'copied';
        } } });
        body.appendChild(el('h3', { text: 'Parameters (A1111 infotext)' }));
        body.appendChild(text);
        body.appendChild(copy);
      }
      var table = el('table', {});
      Object.keys(row).filter(function (k) { return k !== 'infotext' && k !== 'src'; }).forEach(function (k) {
        table.appendChild(el('tr', {}, el('th', { text: k }), el('td', { text: fmt(row[k]) })));
      });
      body.appendChild(el('h3', { text: 'All columns' }));
      body.appendChild(table);
      $('detail').hidden = false;
    });
  }
  function closeDetail() { $('detail').hidden = true; }

  // ------------------------------------------------------------------ XYZ grid
  function renderGridControls() {
    var form = clear($('grid-controls'));
    var names = choiceColumns();
    if (!state.x && names.length) state.x = names[0];
    if (!state.y && names.length > 1) state.y = names[1];
    [['x', 'X axis'], ['y', 'Y axis'], ['z', 'Z axis']].forEach(function (pair) {
      var select = el('select', { id: 'axis-' + pair[0], on: { change: function () { state[pair[0]] = select.value; update(); } } });
      if (pair[0] === 'z') select.appendChild(el('option', { value: '', text: 'none' }));
      names.forEach(function (n) { select.appendChild(el('option', { value: n, text: n })); });
      select.value = state[pair[0]] || '';
      form.appendChild(el('label', {}, pair[1], select));
    });
  }

  function renderGrid() {
    var box = clear($('xyz'));
    if (!COLS[state.x] || !COLS[state.y] || state.x === state.y) {
      box.appendChild(el('p', { class: 'note', text: 'Pick two different columns for X and Y.' }));
      return;
    }
    var all = filtered();
    var rows = all.filter(function (i) { return value('status', i) === 'ok'; });
    var zName = COLS[state.z] && state.z !== state.x && state.z !== state.y ? state.z : '';
    // only the values the filtered rows have (an error row keeps its empty cell)
    function present(name) {
      var seen = {};
      all.forEach(function (i) { seen[COLS[name].codes[i]] = true; });
      return COLS[name].values.map(function (_, c) { return c; }).filter(function (c) { return seen[c]; });
    }
    var xs = present(state.x), ys = present(state.y);
    var zs = zName ? present(zName) : [-2];
    zs.forEach(function (z) {
      var cells = {}, counts = {};
      rows.forEach(function (i) {
        if (zName && COLS[zName].codes[i] !== z) return;
        var key = COLS[state.y].codes[i] + ',' + COLS[state.x].codes[i];
        counts[key] = (counts[key] || 0) + 1;
        if (!(key in cells)) cells[key] = i;
      });
      var table = el('table', { class: 'xyz' });
      var head = el('tr', {}, el('th', { text: state.y + ' \\ ' + state.x }));
      xs.forEach(function (xc) { head.appendChild(el('th', { text: fmt(COLS[state.x].values[xc]) })); });
      table.appendChild(head);
      ys.forEach(function (yc) {
        var tr = el('tr', {}, el('th', { text: fmt(COLS[state.y].values[yc]) }));
        xs.forEach(function (xc) {
          var key = yc + ',' + xc, i = cells[key];
          var td = el('td', {});
          if (i === undefined) td.appendChild(el('span', { class: 'empty' }));
          else {
            var pic = img(thumbUrl(I.output_id[i]), I.output_id[i]);
            pic.addEventListener('click', function () { openDetail(i); });
            td.appendChild(pic);
            if (counts[key] > 1) td.appendChild(el('span', { class: 'more', text: 'first of ' + counts[key] }));
          }
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      if (zName) box.appendChild(el('h3', { text: zName + ': ' + fmt(COLS[zName].values[z]) }));
      box.appendChild(table);
    });
    var pngs = clear($('grid-pngs'));
    (S.grids || []).forEach(function (g) {
      pngs.appendChild(el('figure', {}, el('a', { href: g, target: '_blank' }, el('img', { src: g, alt: g, style: 'max-width:100%' })), el('figcaption', { text: g })));
    });
  }

  // ------------------------------------------------------------------ errors, clips, summary
  function renderErrors() {
    var box = clear($('error-list'));
    var rows = [];
    for (var i = 0; i < I.n; i++) if (value('status', i) !== 'ok') rows.push(i);
    if (!rows.length) { box.appendChild(el('p', { text: 'No error rows.' })); return; }
    var table = el('table', {}, el('tr', {}, el('th', { text: 'output' }), el('th', { text: 'error' })));
    rows.slice(0, 2000).forEach(function (i) {
      table.appendChild(el('tr', { on: { click: function () { openDetail(i); } } }, el('td', { text: I.output_id[i] }), el('td', { text: fmt(value('error', i)) })));
    });
    box.appendChild(el('p', { text: rows.length + ' error row(s)' + (rows.length > 2000 ? '; the first 2000:' : ':') }));
    box.appendChild(table);
  }

  function renderClips() {
    var box = clear($('clip-list'));
    CLIPS.forEach(function (c) {
      var media = el('div', { class: 'media' });
      if (c.video) media.appendChild(el('video', { src: c.video, controls: '', loop: '', muted: '', preload: 'metadata' }));
      if (c.contact_sheet) media.appendChild(el('figure', {}, img(c.contact_sheet, 'contact sheet of ' + c.id), el('figcaption', { text: 'contact sheet' })));
      if (c.plot) media.appendChild(el('figure', {}, el('img', { src: c.plot, alt: 'schedules of ' + c.id }), el('figcaption', { text: 'schedules' })));
      box.appendChild(el('div', { class: 'clip' },
        el('h2', { text: c.id + ' — ' + fmt(c.status) }),
        el('p', { text: fmt(c.frames_written) + ' of ' + fmt(c.max_frames) + ' frames' }),
        c.error ? el('p', { class: 'bad', text: 'error: ' + c.error }) : null, media));
    });
    if (!CLIPS.length) box.appendChild(el('p', { text: 'No clips yet.' }));
  }

  function figures() {
    var s = S.summary || {}, c = S.cost || {};
    var list = [
      ['images ok', s.ok], ['error rows', s.error], ['expected outputs', s.expected_outputs],
      ['clips', s.clips], ['images/s', s.images_per_s], ['wall time (s)', s.wall_s],
      ['replica-s per image', c.replica_s_per_image], ['GPU hours per 1000 images', c.gpu_hours_per_1000_images],
      ['price per GPU hour', c.price_per_gpu_hour], ['cost per 1000 images', c.cost_per_1000_images]
    ];
    return list.filter(function (p) { return p[1] !== undefined && p[1] !== null; });
  }

  function renderSummary() {
    var box = clear($('summary'));
    var dl = el('dl', { class: 'figures' });
    figures().forEach(function (p) { dl.appendChild(el('dt', { text: p[0] })); dl.appendChild(el('dd', { text: fmt(p[1]) })); });
    box.appendChild(dl);
    if (!S.cost || S.cost.cost_per_1000_images === null || S.cost.cost_per_1000_images === undefined) {
      box.appendChild(el('p', { class: 'note', text: 'No price given: set price_per_gpu_hour in the job, or pass --price-per-gpu-hour to sdfleet report.' }));
    }
    var job = S.job || {};
    var jt = el('table', {});
    Object.keys(job).forEach(function (k) { jt.appendChild(el('tr', {}, el('th', { text: k }), el('td', { text: fmt(job[k]) }))); });
    box.appendChild(el('h3', { text: 'Job' }));
    box.appendChild(jt);
    box.appendChild(el('details', {}, el('summary', { text: 'summary.json' }), el('pre', { text: JSON.stringify(S.summary || {}, null, 2) })));
    box.appendChild(el('p', { class: 'note', text: 'Report made ' + fmt(S.generated_at) + '; run `sdfleet report` again to bring it up to date.' }));
  }

  function headline() {
    var s = S.summary || {}, c = S.cost || {};
    var parts = [];
    if (S.kind === 'animation') parts.push(CLIPS.length + ' clip(s)');
    else parts.push(I.n + ' images');
    var errors = S.kind === 'animation' ? CLIPS.filter(function (x) { return x.status !== 'ok'; }).length : $count();
    parts.push(errors + ' error(s)');
    if (s.images_per_s) parts.push(s.images_per_s + ' images/s');
    if (c.cost_per_1000_images !== null && c.cost_per_1000_images !== undefined) parts.push(c.cost_per_1000_images + ' per 1000 images');
    $('headline').textContent = parts.join(' · ');
    var job = S.job || {};
    var name = job.name || (job.source ? String(job.source).split('/').pop() : '');
    $('title').textContent = 'sdfleet report' + (name ? ': ' + name : '');
  }
  function $count() { var n = 0; for (var i = 0; i < I.n; i++) if (value('status', i) !== 'ok') n++; return n; }

  // ------------------------------------------------------------------ tabs
  function tabs() {
    return S.kind === 'animation'
      ? [['clips', 'Clips'], ['summary', 'Summary']]
      : [['images', 'Images'], ['grid', 'XYZ grid'], ['errors', 'Errors'], ['summary', 'Summary']];
  }
  function renderTabs() {
    var nav = clear($('tabs'));
    var list = tabs();
    if (!list.some(function (t) { return t[0] === state.tab; })) state.tab = list[0][0];
    list.forEach(function (t) {
      nav.appendChild(el('button', { type: 'button', id: 'tab-button-' + t[0], class: state.tab === t[0] ? 'active' : null,
        on: { click: function () { state.tab = t[0]; update(); } } }, t[1]));
    });
    document.querySelectorAll('.tab').forEach(function (s) { s.hidden = s.id !== 'tab-' + state.tab; });
  }

  function update() {
    renderTabs();
    if (state.tab === 'images') renderGallery();
    if (state.tab === 'grid') { renderGridControls(); renderGrid(); }
    if (state.tab === 'errors') renderErrors();
    if (state.tab === 'clips') renderClips();
    if (state.tab === 'summary') renderSummary();
    writeHash();
  }

  readHash();
  headline();
  renderControls();
  $('detail-close').addEventListener('click', closeDetail);
  $('detail').addEventListener('click', function (e) { if (e.target === $('detail')) closeDetail(); });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') closeDetail(); });
  update();
})();
