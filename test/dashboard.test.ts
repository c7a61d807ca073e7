/**
 * The live dashboard (GET /ui) in a real browser: Debian's Chromium, headless, driven by
 * playwright-core, against a real 3-node cluster with TLS and auth on.
 * - the page is public, its data needs a credential: the page signs in with root's password
 *   (POST /v1/auth/token) and reads the state stream with the bearer token;
 * - every file the page loads comes from the node (uPlot bundled, no CDN);
 * - kill -9 of the leader: the page, served by a follower, shows the new leader within 3 s;
 * - SIGSTOP of a follower under writes: the page shows its lag rising, then falling after
 *   SIGCONT.
 * - through kv-router: the same page, a link per group behind the router, and a new leader
 *   shown within 3 s of a kill -9; the router's stream limit and its coded error.
 * Screenshots go to test-artifacts/ (gitignored), left there for CI to collect.
 */
import { mkdir, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { Agent, Pool, request } from 'undici'
import {
  LeaderlessCluster,
  TestCluster,
  startRouterProcess,
  stopRouterProcess,
  until,
  type RouterProcess,
} from '@kvstore/testkit'
import { caPem, rootConnect, rootPassword, testCertsDir } from './support/certs.js'

const chromiumPath = process.env.KV_CHROMIUM ?? '/usr/bin/chromium'
const artifacts = join(import.meta.dirname, '..', 'test-artifacts')

let cluster: TestCluster
let browser: Browser
const anonymous = new Agent({ connect: { ca: caPem() } })

beforeAll(async () => {
  await mkdir(artifacts, { recursive: true })
  // This run's screenshots only (a failure's from an earlier run would mislead).
  for (const name of await readdir(artifacts))
    if (name.startsWith('dashboard-')) await rm(join(artifacts, name), { force: true })
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Containers and CI runners often lack the user namespaces Chromium's sandbox needs.
    args: ['--no-sandbox'],
  })
}, 60_000)
afterAll(async () => {
  await browser?.close()
  await anonymous.close()
})

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(artifacts, `dashboard-${name}.png`), fullPage: true })
}

/** The leader the page shows now ('' while it shows none). */
async function shownLeader(page: Page): Promise<string> {
  return (await page.getAttribute('#leader', 'data-leader')) ?? ''
}

/** The little of the DOM the page-side predicates use (the tests compile without lib.dom). */
interface PageGlobals {
  document: {
    querySelector(selector: string): { dataset: Record<string, string | undefined> } | null
  }
}

/**
 * Page-side predicates: functions (evaluated by the DevTools protocol, which the page's
 * Content-Security-Policy allows), not strings (eval, which it forbids).
 */
function leaderOtherThan(old: string): boolean {
  const doc = (globalThis as unknown as PageGlobals).document
  const shown = doc.querySelector('#leader')?.dataset.leader ?? ''
  return shown !== '' && shown !== old
}
function leaderIs(id: string): boolean {
  const doc = (globalThis as unknown as PageGlobals).document
  return doc.querySelector('#leader')?.dataset.leader === id
}
function lagAtLeast([id, ms]: [string, number]): boolean {
  const doc = (globalThis as unknown as PageGlobals).document
  return Number(doc.querySelector(`#members tr[data-member="${id}"]`)?.dataset.lagMs ?? 0) >= ms
}
function hintsShownAtLeast([id, count]: [string, number]): boolean {
  const doc = (globalThis as unknown as PageGlobals).document
  const row = doc.querySelector(`#ring tr[data-member="${id}"]`)
  return Number(row?.dataset.hints ?? 0) >= count && row?.dataset.up === 'false'
}
function lagBelow([id, ms]: [string, number]): boolean {
  const doc = (globalThis as unknown as PageGlobals).document
  const lag = doc.querySelector(`#members tr[data-member="${id}"]`)?.dataset.lagMs
  return lag !== undefined && Number(lag) < ms
}

/**
 * Opens the dashboard and signs in as root. Chromium drops a request when it sees the host's
 * network change (ERR_NETWORK_CHANGED: other processes on a shared CI machine add and remove
 * interfaces); such a load or login is tried again, at most three times.
 */
async function signIn(page: Page, url: string, shot = true): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url)
      // Auth is on: the page asks for a user before it shows anything.
      await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 })
      if (attempt === 1 && shot) await screenshot(page, '1-login')
      await page.fill('#login-user', 'root')
      await page.fill('#login-password', rootPassword())
      await page.click('#login-submit')
      await page.waitForSelector('#dashboard:not([hidden]), #login-error:not(:empty)', {
        timeout: 10_000,
      })
      const error = await page.textContent('#login-error')
      if (error !== null && error !== '') throw new Error(`sign-in failed: ${error}`)
      return
    } catch (err) {
      if (attempt >= 3 || !/ERR_NETWORK_CHANGED|Failed to fetch/.test(String(err))) throw err
    }
  }
}

/** Bounded quorum writes to the leader until stopped; counts the acknowledged ones. */
function startWriter(url: string, deadlineMs: number) {
  const pool = new Pool(url, { connections: 4, connect: rootConnect() })
  let stop = false
  let acked = 0
  const until = Date.now() + deadlineMs
  const loop = async (w: number) => {
    for (let i = 0; !stop && Date.now() < until; i++) {
      try {
        const res = await pool.request({
          method: 'PUT',
          path: `/v1/kv/dash/${w}/${i}?ack=quorum`,
          body: `v${i}`,
          headersTimeout: 3000,
        })
        await res.body.text()
        if (res.statusCode === 200) acked++
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }
  const running = Promise.all([0, 1, 2, 3].map(loop))
  return {
    get acked() {
      return acked
    },
    async stop() {
      stop = true
      await running
      await pool.close()
    },
  }
}

describe('the dashboard at /ui', () => {
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  }, 60_000)
  afterAll(async () => {
    await cluster?.stop()
  })

  it('serves the page to anyone, and its data only with a credential', async () => {
    const url = cluster.leader.url
    const page = await request(`${url}/ui`, { dispatcher: anonymous })
    expect(page.statusCode).toBe(200)
    expect(page.headers['content-type']).toMatch(/^text\/html/)
    const html = await page.body.text()
    // Every script and style is the node's own: nothing from another origin.
    expect(html).toContain('/ui/assets/uPlot.iife.min.js')
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//)
    const uplot = await request(`${url}/ui/assets/uPlot.iife.min.js`, { dispatcher: anonymous })
    expect(uplot.statusCode).toBe(200)
    expect(await uplot.body.text()).toContain('uPlot')
    const missing = await request(`${url}/ui/assets/%2e%2e%2fpackage.json`, {
      dispatcher: anonymous,
    })
    expect(missing.statusCode).toBe(404)
    await missing.body.text()

    for (const path of ['/ui/v1/stream', '/ui/v1/state']) {
      const res = await request(`${url}${path}`, { dispatcher: anonymous })
      const body = (await res.body.json()) as { error: { code: string } }
      expect([path, res.statusCode, body.error.code]).toEqual([path, 401, 'KV_ERR_UNAUTHENTICATED'])
    }
    // Root (an admin) may read it; the state has the cluster and its bounded histories.
    const state = (await (await fetch(`${url}/ui/v1/state`)).json()) as {
      view: { leaderId: string; members: unknown[] }
      history: unknown[]
      historySamplesMax: number
    }
    expect(state.view.leaderId).toBe(cluster.leader.id)
    expect(state.view.members).toHaveLength(3)
    expect(state.history.length).toBeGreaterThan(0)
    expect(state.history.length).toBeLessThanOrEqual(state.historySamplesMax)
  })

  it('shows a new leader within 3 s of a kill -9, and a paused follower lagging', async () => {
    const context = await browser.newContext({
      // The nodes' certificates are signed by the test run's own CA, which Chromium does not
      // know; the page's requests still go over TLS to the node.
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 1000 },
    })
    const page = await context.newPage()
    const origins = new Set<string>()
    page.on('request', (r) => origins.add(new URL(r.url()).origin))
    const errors: string[] = []
    page.on('pageerror', (err) => errors.push(err.message))
    try {
      const oldLeader = cluster.leader
      const served = cluster.followers[0]!
      await signIn(page, `${served.url}/ui`)
      await page.waitForFunction(leaderIs, oldLeader.id, { timeout: 10_000 })
      expect(await page.locator('#members tbody tr').count()).toBe(3)
      expect(await page.textContent('#status')).toBe('live')
      // uPlot drew the lag and epoch charts.
      expect(await page.locator('#lag-chart canvas').count()).toBe(1)
      expect(await page.locator('#epoch-chart canvas').count()).toBe(1)
      const epochBefore = Number(await page.getAttribute('#epoch', 'data-epoch'))
      await screenshot(page, '2-live')

      // kill -9 of the leader: the page (on a follower) shows the new one within 3 s.
      await cluster.kill(oldLeader.id)
      const killedAt = Date.now()
      await page.waitForFunction(leaderOtherThan, oldLeader.id, { timeout: 3000, polling: 50 })
      const shownAfterMs = Date.now() - killedAt
      await screenshot(page, '3-new-leader')
      const newLeader = await cluster.waitForLeader()
      expect(await shownLeader(page)).toBe(newLeader.id)
      expect(shownAfterMs).toBeLessThan(3000)
      expect(Number(await page.getAttribute('#epoch', 'data-epoch'))).toBeGreaterThan(epochBefore)
      // The timeline has the change: the new leader at a higher epoch.
      const changes: { leader: string | null; epoch: number }[] = []
      for (const row of await page.locator('#leadership tbody tr').all())
        changes.push({
          leader: await row.getAttribute('data-leader'),
          epoch: Number(await row.getAttribute('data-epoch')),
        })
      expect(changes[0]).toEqual({ leader: newLeader.id, epoch: expect.any(Number) })
      expect(changes[0]!.epoch).toBeGreaterThan(epochBefore)
      expect(changes.some((c) => c.leader === oldLeader.id)).toBe(true)
      process.stdout.write(
        `dashboard: new leader ${newLeader.id} shown ${shownAfterMs} ms after the kill\n`,
      )

      // The old leader comes back as a follower; then a follower (not the page's) is paused.
      await cluster.startMember(oldLeader.id)
      await cluster.waitForApplied()
      const leaderNow = await cluster.waitForLeader()
      const paused = cluster.members.find((m) => m.id !== leaderNow.id && m.id !== served.id)!
      // Only the leader measures lag; a page served by a follower shows it from the leader's
      // heartbeats. Watch from both: this page, and one on the follower that is not paused
      // (when this page is on the leader now).
      const observer = cluster.members.find((m) => m.id !== leaderNow.id && m.id !== paused.id)!
      const pages = [page]
      if (observer.id !== served.id) {
        const followerPage = await context.newPage()
        followerPage.on('pageerror', (err) => errors.push(err.message))
        await signIn(followerPage, `${observer.url}/ui`, false)
        pages.push(followerPage)
      }
      const lagOf = async (p: Page) =>
        Number(await p.getAttribute(`#members tr[data-member="${paused.id}"]`, 'data-lag-ms'))
      const writer = startWriter(leaderNow.url, 40_000)
      try {
        await until('writes to flow', () => writer.acked > 50)
        cluster.pause(paused.id)
        const pausedAt = Date.now()
        for (const p of pages)
          await p.waitForFunction(lagAtLeast, [paused.id, 1500] as [string, number], {
            timeout: 15_000,
            polling: 100,
          })
        const first = await Promise.all(pages.map(lagOf))
        await new Promise((resolve) => setTimeout(resolve, 1500))
        const later = await Promise.all(pages.map(lagOf))
        // It keeps rising while the follower sleeps, and the chart has its samples.
        for (const [i, p] of pages.entries()) {
          expect(later[i]).toBeGreaterThan(first[i] as number)
          const series = await p.locator('#lag-chart .u-legend .u-series').allTextContents()
          expect(series.some((s) => s.includes(paused.id))).toBe(true)
        }
        await screenshot(page, '4-follower-paused')
        if (pages[1] !== undefined) await screenshot(pages[1], '4-follower-paused-seen-by-follower')
        process.stdout.write(
          `dashboard: paused ${paused.id}: lag shown ${first.join('/')} ms, then ${later.join('/')} ms (${Date.now() - pausedAt} ms after SIGSTOP; pages on ${served.id}${pages.length > 1 ? ` and ${observer.id}` : ''})\n`,
        )
      } finally {
        cluster.resume(paused.id)
      }
      // Resumed, it catches up: the page shows its lag back under a second.
      for (const p of pages)
        await p.waitForFunction(lagBelow, [paused.id, 1000] as [string, number], {
          timeout: 20_000,
          polling: 100,
        })
      await writer.stop()
      await screenshot(page, '5-caught-up')
      // Nothing came from anywhere but the node serving the page.
      expect([...origins]).toEqual([new URL(served.url).origin])
      expect(errors).toEqual([])
    } catch (err) {
      // What the page showed when it failed, kept with the other screenshots.
      await screenshot(page, 'failure').catch(() => {})
      throw err
    } finally {
      await context.close()
    }
  })
})

describe('the dashboard of a leaderless cluster', () => {
  let ll: LeaderlessCluster
  beforeAll(async () => {
    // Four members and N=3: a write whose replica is down leaves a hint on a stand-in.
    ll = await LeaderlessCluster.start(4, ['--replicas', '3', '--default-w', '2'])
  }, 60_000)
  afterAll(async () => {
    await ll?.close()
  })

  it('shows the ring, and the hints a member holds for a dead one', async () => {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 1000 },
    })
    const page = await context.newPage()
    try {
      const down = ll.members[3]!
      await ll.kill(down.id)
      const pool = new Pool(ll.members[0]!.url, { connections: 4, connect: rootConnect() })
      try {
        for (let i = 0; i < 40; i++) {
          const res = await pool.request({ method: 'PUT', path: `/v1/kv/ll/${i}`, body: `v${i}` })
          await res.body.text()
          expect(res.statusCode).toBe(200)
        }
      } finally {
        await pool.close()
      }
      // A hint is sent beside the write: wait until one lands, then open the page on its holder.
      let holder: { id: string; url: string; held: number } | null = null
      await until('a hint for the dead member', async () => {
        for (const m of ll.members.slice(0, 3)) {
          const held = (await ll.hints(m.id)).byTarget[down.id] ?? 0
          if (held > 0) holder = { id: m.id, url: m.url, held }
        }
        return holder !== null
      })
      const { url, held } = holder as unknown as { url: string; held: number }
      await signIn(page, `${url}/ui`, false)
      await page.waitForSelector('#leaderless:not([hidden])', { timeout: 10_000 })
      expect(await page.locator('#ring tbody tr').count()).toBe(4)
      expect(await page.textContent('#leader')).toBe('none (leaderless)')
      // Every member owns a share of the ring, and the shares add up to the whole ring.
      const shares = (await page.locator('#ring tbody tr td:nth-child(4)').allTextContents()).map(
        (t) => parseFloat(t),
      )
      expect(shares.every((share) => share > 0)).toBe(true)
      expect(Math.abs(shares.reduce((a, b) => a + b, 0) - 100)).toBeLessThan(0.5)
      // The dead member is down, with the hints its stand-in holds, on the chart too.
      await page.waitForFunction(hintsShownAtLeast, [down.id, held] as [string, number], {
        timeout: 5000,
        polling: 100,
      })
      const series = await page.locator('#lag-chart .u-legend .u-series').allTextContents()
      expect(series.some((s) => s.includes(down.id))).toBe(true)
      await screenshot(page, '6-leaderless-hints')
    } catch (err) {
      await screenshot(page, 'failure-leaderless').catch(() => {})
      throw err
    } finally {
      await context.close()
    }
  })
})

describe('the dashboard through kv-router', () => {
  let group: TestCluster
  let router: RouterProcess
  const streamsMax = 2
  beforeAll(async () => {
    group = await TestCluster.start(3)
    const certs = testCertsDir()
    router = await startRouterProcess([
      '--group',
      `g1=${group.members.map((m) => m.url).join(',')}`,
      '--cert-file',
      join(certs, 'n9.crt'),
      '--key-file',
      join(certs, 'n9.key'),
      '--ca-file',
      join(certs, 'ca.crt'),
      // A development identity (root's certificate): the router refuses anyone without a
      // credential of their own, except for the page and its files.
      '--identity-cert',
      join(certs, 'root.crt'),
      '--identity-key',
      join(certs, 'root.key'),
      '--probe-interval-ms',
      '200',
      '--probe-timeout-ms',
      '500',
      '--ui-streams-max',
      String(streamsMax),
    ])
  }, 60_000)
  afterAll(async () => {
    if (router !== undefined) await stopRouterProcess(router)
    await group?.stop()
  })

  it('serves the page to anyone and its data only with a credential; bounds its streams', async () => {
    const page = await request(`${router.url}/ui`, { dispatcher: anonymous })
    expect(page.statusCode).toBe(200)
    expect(page.headers['content-type']).toMatch(/^text\/html/)
    expect(page.headers['content-security-policy']).toContain("default-src 'none'")
    expect(await page.body.text()).toContain('id="group-links"')
    const uplot = await request(`${router.url}/ui/assets/uPlot.iife.min.js`, {
      dispatcher: anonymous,
    })
    expect(uplot.statusCode).toBe(200)
    expect(await uplot.body.text()).toContain('uPlot')
    for (const path of ['/ui/v1/stream', '/ui/v1/state']) {
      const res = await request(`${router.url}${path}`, { dispatcher: anonymous })
      const body = (await res.body.json()) as { error: { code: string } }
      expect([path, res.statusCode, body.error.code]).toEqual([path, 401, 'KV_ERR_UNAUTHENTICATED'])
    }
    // Root (by its certificate) reads the group's state through the router.
    const state = await fetch(`${router.url}/ui/v1/state?group=g1`)
    expect(state.status).toBe(200)
    expect(state.headers.get('kv-group')).toBe('g1')
    const body = (await state.json()) as { view: { leaderId: string; members: unknown[] } }
    expect(body.view.leaderId).toBe(group.leader.id)
    expect(body.view.members).toHaveLength(3)
    const unknown = await fetch(`${router.url}/ui/v1/stream?group=nope`)
    expect(unknown.status).toBe(400)
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_ARGUMENT',
    )

    // The stream: the router's own event first, then the member's snapshot.
    const streams: AbortController[] = []
    try {
      for (let i = 0; i < streamsMax; i++) {
        const aborter = new AbortController()
        streams.push(aborter)
        const res = await fetch(`${router.url}/ui/v1/stream`, { signal: aborter.signal })
        expect(res.status).toBe(200)
        expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
        const reader = res.body!.getReader()
        let text = ''
        while (!text.includes('event: snapshot')) {
          const { value, done } = await reader.read()
          if (done) break
          text += new TextDecoder().decode(value)
        }
        expect(text.startsWith('event: router\n')).toBe(true)
        const info = JSON.parse(text.split('\n')[1]!.slice('data: '.length)) as {
          group: string
          groups: { id: string; members: string[] }[]
        }
        expect(info.group).toBe('g1')
        expect(info.groups.map((g) => g.id)).toEqual(['g1'])
        expect(text).toContain('event: snapshot')
      }
      // One stream past --ui-streams-max: a coded 503 with Retry-After, and nothing held.
      const over = await fetch(`${router.url}/ui/v1/stream`)
      expect(over.status).toBe(503)
      expect(over.headers.get('retry-after')).toBe('1')
      expect(((await over.json()) as { error: { code: string } }).error.code).toBe(
        'KV_ERR_DASHBOARD_STREAMS_TOO_MANY',
      )
    } finally {
      for (const aborter of streams) aborter.abort()
    }
    // Closed streams free their places.
    await until('a stream opens again once the others closed', async () => {
      const aborter = new AbortController()
      const res = await fetch(`${router.url}/ui/v1/stream`, { signal: aborter.signal })
      aborter.abort()
      return res.status === 200
    })
  })

  it('shows the group behind it, and a new leader within 3 s of a kill -9', async () => {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 1000 },
    })
    const page = await context.newPage()
    const origins = new Set<string>()
    page.on('request', (r) => origins.add(new URL(r.url()).origin))
    const errors: string[] = []
    page.on('pageerror', (err) => errors.push(err.message))
    try {
      const oldLeader = group.leader
      await signIn(page, `${router.url}/ui?group=g1`, false)
      await page.waitForFunction(leaderIs, oldLeader.id, { timeout: 10_000 })
      expect(await page.locator('#members tbody tr').count()).toBe(3)
      await page.waitForSelector('#groups:not([hidden])', { timeout: 5000 })
      expect(await page.getAttribute('#group-links a[aria-current="page"]', 'data-group')).toBe(
        'g1',
      )
      await screenshot(page, 'router-1-live')

      await group.kill(oldLeader.id)
      const killedAt = Date.now()
      await page.waitForFunction(leaderOtherThan, oldLeader.id, { timeout: 3000, polling: 50 })
      const shownAfterMs = Date.now() - killedAt
      await screenshot(page, 'router-2-new-leader')
      const newLeader = await group.waitForLeader()
      expect(await shownLeader(page)).toBe(newLeader.id)
      expect(shownAfterMs).toBeLessThan(3000)
      process.stdout.write(
        `dashboard through the router: new leader ${newLeader.id} shown ${shownAfterMs} ms after the kill\n`,
      )
      // Everything the page loaded came through the router.
      expect([...origins]).toEqual([new URL(router.url).origin])
      expect(errors).toEqual([])
    } catch (err) {
      await screenshot(page, 'failure-router').catch(() => {})
      throw err
    } finally {
      await context.close()
    }
  })
})
