/* global window, document, uPlot */
/**
 * The dashboard page: reads GET /ui/v1/stream (Server-Sent Events, through fetch so that it
 * can send a bearer token), keeps the histories it gets (bounded like the node's), and draws
 * them with uPlot. No framework, no build step, nothing loaded from elsewhere.
 */
;(function () {
  'use strict'

  const tokenKey = 'kv.dashboard.token'
  const colors = ['#0969da', '#cf222e', '#1a7f37', '#8250df', '#bf8700', '#1b7c83', '#e16f24']
  const $ = (id) => document.getElementById(id)

  /** What the page holds: the node's histories, trimmed to historySamplesMax. */
  const model = {
    historySamplesMax: 600,
    history: [],
    current: null,
  }
  let lagChart = null
  let lagChartKey = ''
  let epochChart = null
  let retryTimer = null
  let reader = null

  /** Through kv-router: the group this page shows (?group=ID), passed on to the stream. */
  function groupQuery() {
    const group = new URLSearchParams(window.location.search).get('group')
    return group === null ? '' : `?group=${encodeURIComponent(group)}`
  }

  function token() {
    return sessionStorage.getItem(tokenKey)
  }

  function setStatus(state, text) {
    const el = $('status')
    el.dataset.state = state
    el.textContent = text
  }

  function text(value) {
    return value === null || value === undefined ? '–' : String(value)
  }

  function time(ms) {
    return new Date(ms).toLocaleTimeString()
  }

  function cell(row, value) {
    const td = document.createElement('td')
    td.textContent = text(value)
    row.appendChild(td)
    return td
  }

  function fillRows(tbody, rows, build) {
    tbody.replaceChildren()
    for (const item of rows) {
      const tr = document.createElement('tr')
      build(tr, item)
      tbody.appendChild(tr)
    }
  }

  // ------------------------------------------------------------------ login

  function showLogin(message) {
    $('login').hidden = false
    $('dashboard').hidden = true
    $('login-error').textContent = message || ''
    setStatus('login', 'sign in needed')
  }

  async function login(event) {
    event.preventDefault()
    $('login-error').textContent = ''
    try {
      const res = await fetch('/v1/auth/token', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: $('login-user').value, password: $('login-password').value }),
      })
      const body = await res.json()
      if (!res.ok) {
        $('login-error').textContent = body.error ? body.error.message : `HTTP ${res.status}`
        return
      }
      sessionStorage.setItem(tokenKey, body.token)
      $('login-password').value = ''
      $('login').hidden = true
      connect()
    } catch (err) {
      $('login-error').textContent = String(err)
    }
  }

  function logout() {
    sessionStorage.removeItem(tokenKey)
    if (reader !== null) reader.cancel().catch(() => {})
    showLogin('')
  }

  // ------------------------------------------------------------------ the stream

  function retryLater() {
    if (retryTimer !== null) return
    retryTimer = window.setTimeout(() => {
      retryTimer = null
      connect()
    }, 1000)
  }

  async function connect() {
    const headers = { accept: 'text/event-stream' }
    const bearer = token()
    if (bearer !== null) headers.authorization = `Bearer ${bearer}`
    setStatus('connecting', 'connecting…')
    let res
    try {
      res = await fetch(`/ui/v1/stream${groupQuery()}`, { headers, cache: 'no-store' })
    } catch (err) {
      setStatus('error', `no answer (${err.message}); retrying`)
      return retryLater()
    }
    if (res.status === 401 || res.status === 403) {
      const body = await res.json().catch(() => ({}))
      if (bearer !== null) sessionStorage.removeItem(tokenKey)
      return showLogin(body.error ? body.error.message : '')
    }
    if (!res.ok || res.body === null) {
      const body = await res.text().catch(() => '')
      setStatus('error', `HTTP ${res.status} ${body.slice(0, 200)}; retrying`)
      return retryLater()
    }
    $('logout').hidden = bearer === null
    setStatus('live', 'live')
    reader = res.body.getReader()
    const decoder = new TextDecoder()
    let buffer = ''
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        let end
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          handleFrame(frame)
        }
      }
      setStatus('error', 'the stream ended; reconnecting')
    } catch (err) {
      setStatus('error', `the stream broke (${err.message}); reconnecting`)
    }
    reader = null
    if (!$('login').hidden) return
    retryLater()
  }

  function handleFrame(frame) {
    let event = 'message'
    const data = []
    for (const line of frame.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim()
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart())
    }
    if (data.length === 0) return
    const message = JSON.parse(data.join('\n'))
    if (event === 'router') return renderRouter(message)
    if (event === 'snapshot') {
      model.historySamplesMax = message.historySamplesMax
      model.history = message.history
    } else if (event === 'update') {
      model.history.push(message.sample)
      if (model.history.length > model.historySamplesMax)
        model.history.splice(0, model.history.length - model.historySamplesMax)
    } else {
      return
    }
    model.current = message
    render()
  }

  // ------------------------------------------------------------------ drawing

  /** Served by kv-router: which router, and a link per group behind it (this one marked). */
  function renderRouter(info) {
    $('groups').hidden = false
    $('router-id').textContent = info.routerId
    const links = $('group-links')
    links.replaceChildren()
    for (const group of info.groups) {
      const link = document.createElement('a')
      link.href = `/ui?group=${encodeURIComponent(group.id)}`
      link.textContent = group.id
      link.dataset.group = group.id
      if (group.id === info.group) link.setAttribute('aria-current', 'page')
      links.append(link, ' ')
    }
  }

  function render() {
    const state = model.current
    const view = state.view
    $('dashboard').hidden = false
    $('login').hidden = true
    $('served-by').textContent = `served by ${state.self.nodeId} (${state.self.role})`
    $('mode').textContent = state.mode
    $('cluster-id').textContent = view.clusterId
    const leaderless = view.mode === 'leaderless'
    const leader = $('leader')
    leader.textContent = leaderless ? 'none (leaderless)' : text(view.leaderId || 'none')
    leader.dataset.leader = leaderless ? '' : view.leaderId || ''
    $('epoch').textContent = leaderless ? '–' : String(view.epoch)
    $('epoch').dataset.epoch = leaderless ? '' : String(view.epoch)
    $('commit-lsn').textContent = leaderless ? '–' : String(view.commitLsn)
    $('writable').textContent = view.writable === undefined ? '–' : String(view.writable)
    renderMembers(state, leaderless)
    renderLag(leaderless)
    $('leadership-section').hidden = leaderless
    if (!leaderless) renderLeadership(state)
    renderRollbacks(state.rollbacks)
    $('leaderless').hidden = !leaderless
    if (leaderless) renderLeaderless(view)
  }

  function renderMembers(state, leaderless) {
    const view = state.view
    const table = $('members')
    const head = leaderless
      ? ['member', 'up', 'state', 'last contact (ms)', 'hints held for it']
      : [
          'member',
          'role',
          'epoch',
          'applied LSN',
          'acked LSN',
          'lag (entries)',
          'lag (ms)',
          'last contact (ms)',
          'connected',
        ]
    const thead = table.tHead
    thead.replaceChildren()
    const hr = document.createElement('tr')
    for (const h of head) {
      const th = document.createElement('th')
      th.textContent = h
      hr.appendChild(th)
    }
    thead.appendChild(hr)
    fillRows(table.tBodies[0], view.members, (tr, m) => {
      tr.dataset.member = m.id
      if (leaderless) {
        tr.dataset.role = 'replica'
        tr.dataset.connected = String(m.up)
        cell(tr, m.self ? `${m.id} (this node)` : m.id)
        cell(tr, m.up)
        cell(tr, m.state)
        cell(tr, m.lastContactMs)
        cell(tr, m.hintBacklog)
        return
      }
      // The serving node's own role is the core's (candidate while it runs an election).
      const role = m.id === view.self ? state.self.role : m.role
      tr.dataset.role = role
      tr.dataset.connected = String(m.connected)
      tr.dataset.lagMs = String(m.lagMs)
      tr.dataset.lagEntries = String(m.lagEntries)
      cell(tr, m.id === view.self ? `${m.id} (this node)` : m.id)
      cell(tr, role).className = 'role'
      cell(tr, m.epoch)
      cell(tr, m.appliedLsn)
      cell(tr, m.ackedLsn)
      cell(tr, m.lagEntries)
      cell(tr, m.lagMs).className = 'lag-ms'
      cell(tr, m.lastContactMs)
      cell(tr, m.connected)
    })
  }

  function chartWidth(el) {
    return Math.max(320, el.clientWidth || document.body.clientWidth - 48)
  }

  function renderLag(leaderless) {
    $('lag-title').textContent = leaderless
      ? 'Hints held per member (as this node holds them)'
      : 'Lag per follower (ms, as the leader measures it)'
    const ids = []
    for (const s of model.history)
      for (const id of Object.keys(s.values)) if (!ids.includes(id)) ids.push(id)
    ids.sort()
    const key = `${leaderless}:${ids.join(',')}`
    const xs = model.history.map((s) => s.atMs / 1000)
    const data = [xs, ...ids.map((id) => model.history.map((s) => s.values[id] ?? null))]
    const el = $('lag-chart')
    if (lagChart === null || key !== lagChartKey) {
      if (lagChart !== null) lagChart.destroy()
      lagChartKey = key
      lagChart = new uPlot(
        {
          width: chartWidth(el),
          height: 240,
          scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(10, max)] } },
          axes: [{}, { label: leaderless ? 'hints' : 'ms' }],
          series: [
            {},
            ...ids.map((id, i) => ({
              label: id,
              stroke: colors[i % colors.length],
              width: 2,
            })),
          ],
        },
        data,
        el,
      )
    } else {
      lagChart.setData(data)
    }
  }

  function renderLeadership(state) {
    const xs = model.history.map((s) => s.atMs / 1000)
    const data = [xs, model.history.map((s) => s.epoch)]
    const el = $('epoch-chart')
    if (epochChart === null) {
      epochChart = new uPlot(
        {
          width: chartWidth(el),
          height: 160,
          scales: { x: { time: true } },
          axes: [{}, { label: 'epoch' }],
          series: [
            {},
            {
              label: 'epoch',
              stroke: '#8250df',
              width: 2,
              paths: uPlot.paths.stepped({ align: 1 }),
            },
          ],
        },
        data,
        el,
      )
    } else {
      epochChart.setData(data)
    }
    const changes = state.leadership.slice().reverse()
    fillRows($('leadership').tBodies[0], changes, (tr, c) => {
      tr.dataset.epoch = String(c.epoch)
      tr.dataset.leader = c.leaderId || ''
      cell(tr, time(c.atMs))
      cell(tr, c.epoch)
      cell(tr, c.leaderId || 'none (election)')
      cell(
        tr,
        c.previousEpoch === null ? '–' : `${c.previousLeaderId || 'none'} @ ${c.previousEpoch}`,
      )
    })
  }

  function renderRollbacks(rollbacks) {
    $('rollbacks-held').textContent = String(rollbacks.held)
    $('rollbacks-since-start').textContent = String(rollbacks.rolledBackSinceStart)
    fillRows($('rollbacks').tBodies[0], rollbacks.latest.slice().reverse(), (tr, r) => {
      cell(tr, r.seq)
      cell(tr, r.removedAt)
      cell(tr, r.epoch)
      cell(tr, r.lsn)
      cell(tr, r.entryEpoch)
      cell(tr, r.ops)
    })
  }

  function renderLeaderless(view) {
    $('leaderless-summary').textContent =
      `N=${view.replicas}, W=${view.defaultW}, R=${view.defaultR}, ${view.vnodes} points per member, ` +
      `${view.ring.length} arcs, ring version ${text(view.ringVersion)}; this node holds ` +
      `${text(view.hintsHeld)} hints (window ${text(view.hintWindowMs)} ms); anti-entropy every ` +
      `${text(view.antiEntropyIntervalMs)} ms${view.refilling ? '; refilling from peers' : ''}`
    fillRows($('ring').tBodies[0], view.members, (tr, m) => {
      tr.dataset.member = m.id
      tr.dataset.up = String(m.up)
      tr.dataset.hints = String(m.hintBacklog)
      cell(tr, m.id)
      cell(tr, m.state)
      cell(tr, m.up)
      cell(tr, `${(m.share * 100).toFixed(1)} %`)
      cell(tr, m.arcs)
      cell(tr, m.hintBacklog)
      cell(tr, m.lastAntiEntropyMs === null ? 'never' : time(m.lastAntiEntropyMs))
      cell(tr, m.antiEntropyKeysRepaired)
    })
    const list = $('handoffs')
    list.replaceChildren()
    for (const h of view.handoffs || []) {
      const li = document.createElement('li')
      li.textContent = `${h.kind} ${h.member}${h.replacing ? ` (replacing ${h.replacing})` : ''}: ${h.rangesDone}/${h.rangesTotal} ranges, ${h.keysStreamed} keys`
      list.appendChild(li)
    }
    if (list.children.length === 0) {
      const li = document.createElement('li')
      li.textContent = 'none'
      list.appendChild(li)
    }
  }

  window.addEventListener('resize', () => {
    for (const [chart, id, height] of [
      [lagChart, 'lag-chart', 240],
      [epochChart, 'epoch-chart', 160],
    ])
      if (chart !== null) chart.setSize({ width: chartWidth($(id)), height })
  })
  $('login-form').addEventListener('submit', login)
  $('logout').addEventListener('click', logout)
  connect()
})()
