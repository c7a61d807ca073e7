/**
 * Runs the README's Quickstart and five-minute tour as written, and compares every output the
 * README shows.
 *
 * The cluster is started the way `bash scripts/start.sh` starts it (that script installs, builds,
 * then execs kv-cluster; here the build is already done), on ports of its own and in a fresh
 * directory that stands for the repository: it holds `packages` (a link to the real one) and the
 * cluster's `data`. Every shell line of the tour's `sh` blocks runs, in order, in one bash, with
 * the README's ports (7001-7003) and `<pid of n1>` replaced by this cluster's; each must exit 0.
 * A line `# text` under a command is its expected output, line for line, where `...` stands for
 * anything (within a line, or whole lines when alone on one) and runs of spaces count as one.
 * HOME is the fresh directory too, so `kv login` keeps its token there; its `.curlrc` says
 * `--silent --show-error`, because curl shows no progress meter in a terminal but would here.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { assertBuilt } from '@kvstore/testkit'
import { clusterPorts } from './support/ports.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const readme = readFileSync(join(root, 'README.md'), 'utf8')

/** The body of the README section under `## title`, up to the next `## `. */
function section(title: string): string {
  const start = readme.indexOf(`\n## ${title}\n`)
  if (start < 0) throw new Error(`README.md has no "## ${title}" section`)
  const end = readme.indexOf('\n## ', start + 1)
  return readme.slice(start, end < 0 ? undefined : end)
}

/** The lines of every ```sh block in a section, one array per block. */
function shellBlocks(text: string): string[][] {
  return [...text.matchAll(/\n```sh\n([\s\S]*?)\n```\n/g)].map((m) => (m[1] as string).split('\n'))
}

interface Step {
  command: string
  /** The output the README shows, or null when it shows none. */
  expected: string[] | null
}

function steps(blocks: string[][]): Step[] {
  const out: Step[] = []
  for (const block of blocks) {
    for (const line of block) {
      if (line.trim() === '') continue
      if (line.startsWith('#')) {
        const step = out[out.length - 1]
        if (!step) throw new Error(`expected output before any command: ${line}`)
        step.expected = [...(step.expected ?? []), line.replace(/^# ?/, '')]
      } else {
        out.push({ command: line, expected: null })
      }
    }
  }
  return out
}

/** Lines with \r dropped, runs of blanks as one, and no blanks at either end. */
function normalize(text: string): string {
  return text
    .replace(/\r/g, '')
    .split('\n')
    .map((line) => line.replace(/[ \t]+/g, ' ').trim())
    .join('\n')
    .trim()
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** The README's expected lines as a pattern: `...` alone on a line is any lines, else any text. */
function pattern(expected: string[]): RegExp {
  const lines = normalize(expected.join('\n')).split('\n')
  let source = ''
  lines.forEach((line, i) => {
    const last = i === lines.length - 1
    if (line === '...') source += last ? '[\\s\\S]*' : '(?:[^\\n]*\\n)*?'
    else source += line.split('...').map(escapeRegExp).join('.*?') + (last ? '' : '\\n')
  })
  return new RegExp(`^${source}$`)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

describe('the README Quickstart', () => {
  it('installs and tests with the two commands, and start.sh runs kv-cluster', () => {
    // One block to start a cluster, one to run the tests, each a single command.
    const blocks = shellBlocks(section('Quickstart'))
    expect(blocks.map((block) => block.map((line) => line.split('#')[0]?.trim()))).toEqual([
      ['bash scripts/start.sh'],
      ['bash scripts/test.sh'],
    ])
    const startSh = readFileSync(join(root, 'scripts/start.sh'), 'utf8')
    expect(startSh).toContain('pnpm build')
    expect(startSh.trimEnd().split('\n').pop()).toBe(
      'exec node packages/cli/dist/kv-cluster.js "$@"',
    )
  })

  it('runs every command of the five-minute tour, with the outputs the README shows', async () => {
    assertBuilt()
    const tour = steps(shellBlocks(section('A five-minute tour')))
    expect(tour.length).toBeGreaterThanOrEqual(10)
    expect(tour.some((s) => s.command.startsWith('kill -9 <pid of n1>'))).toBe(true)

    const dir = mkdtempSync(join(tmpdir(), 'kv-quickstart-'))
    symlinkSync(join(root, 'packages'), join(dir, 'packages'))
    writeFileSync(join(dir, '.curlrc'), '--silent\n--show-error\n')
    const { client: clientPort, peer: peerPort } = await clusterPorts(3)
    const env: NodeJS.ProcessEnv = { HOME: dir, PATH: process.env.PATH ?? '/usr/bin:/bin' }
    let cluster: ChildProcess | null = null
    const nodePids: number[] = []
    try {
      cluster = spawn(
        process.execPath,
        [
          'packages/cli/dist/kv-cluster.js',
          '--client-port',
          String(clientPort),
          '--peer-port',
          String(peerPort),
          '--data-dir',
          'data',
        ],
        { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] },
      )
      let printed = ''
      cluster.stdout?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
      cluster.stderr?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
      await waitFor(
        () => printed.includes('Ctrl-C stops every node cleanly'),
        60_000,
        `kv-cluster to start the cluster:\n${printed}`,
      )
      const pids = new Map(
        [...printed.matchAll(/^ {2}(n\d) +(\w+) +https:\/\/\S+ +\(peers: \S+, pid (\d+)\)$/gm)].map(
          (m) => [m[1] as string, { role: m[2] as string, pid: Number(m[3]) }],
        ),
      )
      nodePids.push(...[...pids.values()].map((p) => p.pid))
      expect(nodePids.length, printed).toBe(3)
      expect(pids.get('n1')?.role, 'the tour kills n1 as the leader').toBe('leader')

      const substitute = (text: string) =>
        text
          .replaceAll('127.0.0.1:7001', `127.0.0.1:${clientPort}`)
          .replaceAll('127.0.0.1:7002', `127.0.0.1:${clientPort + 1}`)
          .replaceAll('127.0.0.1:7003', `127.0.0.1:${clientPort + 2}`)
          .replaceAll('127.0.0.1:7301', `127.0.0.1:${clientPort + 300}`)
          .replaceAll(
            /-p 730([123])\b/g,
            (_, i: string) => `-p ${clientPort + 300 + Number(i) - 1}`,
          )
          .replaceAll('<pid of n1>', String(pids.get('n1')?.pid))
      const script = tour
        .map((step, i) => `{\n${substitute(step.command)}\n} > out.${i} 2>&1\necho $? > rc.${i}`)
        .join('\n')
      writeFileSync(join(dir, 'tour.sh'), `${script}\n`)
      const bash = spawn('bash', ['tour.sh'], { cwd: dir, env, stdio: 'ignore' })
      const code = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => bash.kill('SIGKILL'), 90_000)
        bash.on('exit', (c) => {
          clearTimeout(timer)
          resolve(c)
        })
      })
      expect(code, 'the tour finished within 90 s').not.toBeNull()

      tour.forEach((step, i) => {
        const output = readFileSync(join(dir, `out.${i}`), 'utf8')
        const rc = readFileSync(join(dir, `rc.${i}`), 'utf8').trim()
        expect(rc, `exit status of: ${step.command}\n${output}`).toBe('0')
        if (step.expected !== null) {
          expect(normalize(output), `output of: ${step.command}`).toMatch(
            pattern(step.expected.map(substitute)),
          )
        }
      })
      expect(alive(pids.get('n1')?.pid as number), 'n1 was killed').toBe(false)
    } finally {
      const running = (child: ChildProcess) => child.exitCode === null && child.signalCode === null
      if (cluster !== null && cluster.pid !== undefined && running(cluster)) {
        const child = cluster
        child.kill('SIGTERM')
        await waitFor(() => !running(child), 20_000, 'kv-cluster to stop').catch(() =>
          child.kill('SIGKILL'),
        )
      }
      for (const pid of nodePids) if (alive(pid)) process.kill(pid, 'SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    }
  }, 180_000)
})
