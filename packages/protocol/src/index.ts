export * from './codec.js'
export * from './errors.js'
export * from './keys.js'
export * from './limits.js'
