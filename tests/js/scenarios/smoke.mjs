// Two matrix-js-sdk clients, one per server: the first creates a public room with an alias
// on its server, the second joins it by alias over federation, and each sees the other's
// message in its live timeline.
import { login, waitFor, timelineBodies, stopAll } from "../lib/harness.mjs";

export default async function ({ a, b, alias }) {
  const ca = await login(a.url, a.user, a.password);
  const cb = await login(b.url, b.user, b.password);
  try {
    const { room_id: roomId } = await ca.createRoom({ preset: "public_chat", room_alias_name: alias, name: "js smoke" });
    const fullAlias = `#${alias}:${a.serverName}`;
    const joined = await cb.joinRoom(fullAlias);
    await ca.sendTextMessage(roomId, "hello from a");
    await waitFor(() => timelineBodies(cb, joined.roomId).includes("hello from a"), "b to see a's message");
    await cb.sendTextMessage(joined.roomId, "hello from b");
    await waitFor(() => timelineBodies(ca, roomId).includes("hello from b"), "a to see b's message");
    return { roomId, joinedRoomId: joined.roomId, aSees: timelineBodies(ca, roomId), bSees: timelineBodies(cb, joined.roomId) };
  } finally {
    stopAll(ca, cb);
  }
}
