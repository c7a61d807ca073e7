/**
 * Every route gets its authentication check when it is registered (an onRoute hook); a route
 * registered before that hook would get none. The app refuses to become ready then.
 */
import Fastify from 'fastify'
import {
  guardEveryRoute,
  registerHttpAuth,
  type HttpAuthOptions,
} from '../src/security/http-auth.js'

// Registering the hooks touches none of these; only a request would.
const options = {
  auth: {},
  tokens: {},
  audit: {},
  clusterId: 'c',
  rateLimitPerSecond: 0,
  rateLimitBurst: 0,
} as unknown as HttpAuthOptions

function appWithRouteCollector() {
  const app = Fastify()
  guardEveryRoute(app)
  return app
}

describe('the route guard', () => {
  it('lets an app whose every route came after authentication become ready', async () => {
    const app = appWithRouteCollector()
    registerHttpAuth(app, options)
    app.get('/v1/a', async () => 'a')
    app.post('/v1/b', { config: { access: 'public' } }, async () => 'b')
    await expect(app.ready()).resolves.toBeDefined()
    await app.close()
  })

  it('refuses to become ready with a route registered before authentication, naming it', async () => {
    const app = appWithRouteCollector()
    app.get('/v1/early', async () => 'open')
    registerHttpAuth(app, options)
    app.get('/v1/late', async () => 'checked')
    // Fastify adds a HEAD route beside each GET: both are named, and no later route is.
    await expect(app.ready()).rejects.toThrow(
      /no check: GET \/v1\/early, HEAD \/v1\/early; register them after registerHttpAuth$/,
    )
  })
})
