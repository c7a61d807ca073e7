import { expect, it, vi } from 'vitest'

it('adds one exit and one signal listener per process, however often the module is evaluated', async () => {
  const before = {
    exit: process.listenerCount('exit'),
    sigint: process.listenerCount('SIGINT'),
    sigterm: process.listenerCount('SIGTERM'),
  }
  const ran: number[] = []
  for (let i = 0; i < 12; i++) {
    // A fresh evaluation each time, as a runner that re-imports per test file does.
    vi.resetModules()
    const { atExit } = await import('../src/node-process.js')
    atExit(() => ran.push(i))
  }
  expect(process.listenerCount('exit') - before.exit).toBeLessThanOrEqual(1)
  expect(process.listenerCount('SIGINT') - before.sigint).toBeLessThanOrEqual(1)
  expect(process.listenerCount('SIGTERM') - before.sigterm).toBeLessThanOrEqual(1)
  // Every cleanup is still registered: emit the listeners this module added and see them all run.
  const added = process.listeners('exit').slice(before.exit)
  for (const listener of added) (listener as (code: number) => void)(0)
  expect(ran).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
})
