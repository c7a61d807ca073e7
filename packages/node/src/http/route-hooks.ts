/**
 * Route-level hooks added from an `onRoute` hook: what a hook needs from the route's options is
 * read once, when the route is registered, instead of from `request.routeOptions` on every
 * request (fastify builds that object anew on each read).
 */

/** A route's hooks of one kind (none, one or several) with `hook` added last. */
export function withRouteHook<E, H>(existing: E | E[] | undefined, hook: H): (E | H)[] {
  if (existing === undefined) return [hook]
  return [...(Array.isArray(existing) ? existing : [existing]), hook]
}
