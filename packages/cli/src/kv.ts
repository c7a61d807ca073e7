#!/usr/bin/env node
import { runKv } from './kv-command.js'

process.exitCode = await runKv(process.argv.slice(2), {
  env: process.env,
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
})
