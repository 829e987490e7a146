// The daily-use flow across two servers with matrix-js-sdk: `a` (on fedserver) creates a
// public room with an alias, `b` (on the other server) joins it by alias; messages both
// ways; `a`'s unread count for `b`'s message is 1 and drops to 0 after `a`'s read
// receipt; each sees the other's read receipt and typing; `a`'s client has the spec's
// default push rules without the SDK warning about missing ones; a tag set by `a` comes
// back through /sync; `a`'s user directory search finds `b`.
import { sdk, login, waitFor, timelineBodies, stopAll } from "../lib/harness.mjs";
import { logger } from "matrix-js-sdk/lib/logger.js";

export default async function ({ a, b, alias }) {
  // The SDK logs "Adding default global ... push rule" / "Missing default global ... push
  // rule" for every default rule the server did not send.
  // Only the warnings while `a`'s client starts count (the other server's rules are its own).
  let pushRuleWarnings = [];
  const warn = logger.warn.bind(logger);
  logger.warn = (...args) => {
    const text = args.map(String).join(" ");
    if (/push rule/i.test(text)) pushRuleWarnings.push(text);
    warn(...args);
  };
  const ca = await login(a.url, a.user, a.password);
  const aWarnings = pushRuleWarnings;
  pushRuleWarnings = [];
  const cb = await login(b.url, b.user, b.password);
  const bWarnings = pushRuleWarnings;
  try {
    const aId = ca.getUserId();
    const bId = cb.getUserId();
    const hasDefaultRules = ["override", "content", "underride"].every((kind) =>
      (ca.pushRules?.global?.[kind] || []).some((r) => r.default),
    ) && (ca.pushRules.global.override || []).some((r) => r.rule_id === ".m.rule.is_user_mention");

    const { room_id: roomId } = await ca.createRoom({ preset: "public_chat", room_alias_name: alias, name: "daily" });
    await cb.joinRoom(`#${alias}:${a.serverName}`);
    await ca.sendTextMessage(roomId, "hello from a");
    await waitFor(() => timelineBodies(cb, roomId).includes("hello from a"), "b to see a's message");
    await cb.sendTextMessage(roomId, "hello from b");
    await waitFor(() => timelineBodies(ca, roomId).includes("hello from b"), "a to see b's message");

    const roomA = ca.getRoom(roomId);
    const roomB = cb.getRoom(roomId);
    const total = sdk.NotificationCountType.Total;
    await waitFor(() => roomA.getUnreadNotificationCount(total) === 1, "a's unread count to be 1");
    const unreadBefore = roomA.getUnreadNotificationCount(total);
    const lastOf = (room, sender) =>
      room.getLiveTimeline().getEvents().filter((e) => e.getSender() === sender && e.getType() === "m.room.message").pop();

    // Read receipts both ways (real ones, not the SDK's synthesized receipts of senders).
    const fromB = lastOf(roomA, bId);
    await ca.sendReadReceipt(fromB);
    await waitFor(() => roomA.getUnreadNotificationCount(total) === 0, "a's unread count to drop to 0");
    const unreadAfter = roomA.getUnreadNotificationCount(total);
    await waitFor(
      () => roomB.getReadReceiptForUserId(aId, true)?.eventId === fromB.getId(),
      "b to see a's read receipt",
    );
    const fromA = lastOf(roomB, aId);
    await cb.sendReadReceipt(fromA);
    await waitFor(
      () => roomA.getReadReceiptForUserId(bId, true)?.eventId === fromA.getId(),
      "a to see b's read receipt",
    );

    // Typing both ways.
    await ca.sendTyping(roomId, true, 20000);
    await waitFor(() => roomB.getMember(aId)?.typing === true, "b to see a typing");
    await ca.sendTyping(roomId, false, 0);
    await waitFor(() => roomB.getMember(aId)?.typing === false, "b to see a stop typing");
    await cb.sendTyping(roomId, true, 20000);
    await waitFor(() => roomA.getMember(bId)?.typing === true, "a to see b typing");
    await cb.sendTyping(roomId, false, 0);

    // A tag, back through /sync.
    await ca.setRoomTag(roomId, "m.favourite", { order: 0.5 });
    await waitFor(() => roomA.tags["m.favourite"], "the tag to come back through /sync");

    const found = await ca.searchUserDirectory({ term: "Syn Simon" });
    return {
      roomId,
      pushRuleWarnings: aWarnings,
      otherServerPushRuleWarnings: bWarnings,
      hasDefaultRules,
      unreadBefore,
      unreadAfter,
      aSawReceipt: true,
      bSawReceipt: true,
      aSawTyping: true,
      bSawTyping: true,
      tags: roomA.tags,
      directory: found.results.map((r) => r.user_id),
    };
  } finally {
    stopAll(ca, cb);
  }
}
