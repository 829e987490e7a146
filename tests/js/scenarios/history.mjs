// A matrix-js-sdk client (lazy-loading members, as Element does) on one server joins a room
// of the other server where things were said before the join, and scrolls back through
// the whole history the way Element does (paginateEventTimeline until no token is left);
// the edit of one message is applied by the sdk from what the server sent.
import { login, stopAll, sdk, waitFor } from "../lib/harness.mjs";

export default async function ({ b, roomId, via, editedId }) {
  const cb = await login(b.url, b.user, b.password, { startOpts: { lazyLoadMembers: true, initialSyncLimit: 10 } });
  try {
    await cb.joinRoom(roomId, { viaServers: [via] });
    const room = await waitFor(() => cb.getRoom(roomId), "the room in the client");
    let pages = 0;
    for (; pages < 200; pages++) {
      const timeline = room.getLiveTimeline();
      if (timeline.getPaginationToken(sdk.EventTimeline.BACKWARDS) === null) break;
      const more = await cb.paginateEventTimeline(timeline, { backwards: true, limit: 20 });
      if (!more) break;
    }
    const events = room.getLiveTimeline().getEvents();
    const isEdit = (e) => (e.getContent()["m.relates_to"] || {}).rel_type === "m.replace";
    const bodies = events.filter((e) => e.getType() === "m.room.message" && !isEdit(e)).map((e) => e.getOriginalContent().body);
    const edited = room.findEventById(editedId);
    const replacement = edited && edited.replacingEvent();
    return {
      bodies,
      pages,
      createSeen: events.some((e) => e.getType() === "m.room.create"),
      editedBody: replacement ? replacement.getContent()["m.new_content"].body : null,
      senders: [...new Set(events.map((e) => e.getSender()))],
      // The name Element shows next to the message: the sender as of the timeline's state there.
      writerName: edited.sender ? edited.sender.name : null,
    };
  } finally {
    stopAll(cb);
  }
}
