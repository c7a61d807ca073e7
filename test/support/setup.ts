// Every fetch in a process test goes over TLS as root (see certs.ts).
import { installRootDispatcher } from './certs.js'

installRootDispatcher()
