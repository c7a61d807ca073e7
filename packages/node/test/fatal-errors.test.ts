/**
 * A broken invariant found while serving a request is a bug: the request gets a 500 and the node
 * stops (DESIGN, rule 6), instead of serving on in a state the bug made. Any other error is
 * answered and the node goes on.
 */
import Fastify from 'fastify'
import { invariant } from '@kvstore/core'
import { KvError } from '@kvstore/protocol/errors'
import { invariant as storageInvariant } from '@kvstore/storage'
import { registerErrorHandling } from '../src/http/errors.js'
import { NodeMetrics } from '../src/metrics.js'

async function appWithRoutes(onFatal: (err: Error) => void) {
  const app = Fastify()
  registerErrorHandling(app, new NodeMetrics(), onFatal)
  app.get('/core', () => {
    invariant(false, 'an LSN went backwards')
  })
  app.get('/storage', () => {
    storageInvariant(false, 'a committed entry was truncated')
  })
  app.get('/refused', () => {
    throw new KvError('KV_ERR_NOT_LEADER', 'not the leader')
  })
  app.get('/bug', () => {
    throw new TypeError('x is undefined')
  })
  await app.ready()
  return app
}

describe('errors while serving a request', () => {
  it.each(['/core', '/storage'])(
    '%s: a broken invariant answers 500 and stops the node',
    async (url) => {
      const fatal: Error[] = []
      const app = await appWithRoutes((err) => fatal.push(err))
      const res = await app.inject({ method: 'GET', url })
      expect(res.statusCode).toBe(500)
      expect(res.json()).toMatchObject({ error: { code: 'KV_ERR_INTERNAL' } })
      expect(fatal).toHaveLength(1)
      expect(fatal[0]?.message).toMatch(/invariant violated/)
      await app.close()
    },
  )

  it('a coded refusal and an ordinary exception do not stop the node', async () => {
    const fatal: Error[] = []
    const app = await appWithRoutes((err) => fatal.push(err))
    expect((await app.inject({ method: 'GET', url: '/refused' })).statusCode).toBe(421)
    expect((await app.inject({ method: 'GET', url: '/bug' })).statusCode).toBe(500)
    expect(fatal).toHaveLength(0)
    await app.close()
  })
})
