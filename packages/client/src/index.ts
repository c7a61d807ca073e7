export { KvClient, KvError, keyPath } from './client.js'
export type {
  BatchOp,
  BatchResult,
  DeleteResult,
  ErrorCode,
  GetResult,
  KvClientOptions,
  ListItem,
  ListOptions,
  ListPage,
  NodeStatus,
  PutResult,
  StateDigest,
  WriteConditions,
} from './client.js'
