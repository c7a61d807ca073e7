/** @kvstore/router: kv-router, one endpoint in front of many single-leader groups. */
export * from './config.js'
export * from './health.js'
export * from './list-merge.js'
export * from './rate-limit.js'
export * from './session.js'
export * from './shard-map.js'
