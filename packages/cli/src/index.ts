export { runKv } from './kv-command.js'
