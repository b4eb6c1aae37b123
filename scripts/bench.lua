-- The benchmark's hook: counts unlocks in a global and logs the total at shutdown, so that the
-- measurement includes a real Lua call per unlock and nothing else.
unlocks = 0
function on_unlock(ev) unlocks = unlocks + 1 end
function on_stop() knock.log("bench hook", { unlocks = unlocks }) end
