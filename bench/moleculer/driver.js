// The driver broker: creates one `power` document at the owner broker, then on
// `get <in flight> <seconds>` calls `power.get` on it from that many concurrent loops as fast as
// they go, bounded by time, and prints `CALLS <n> <seconds> <p50 us> <p99 us> <errors>`.
"use strict";

const { makeBroker, commands, hammer } = require("./common");

const broker = makeBroker("driver");

broker
	.start()
	.then(() => broker.waitForServices(["power"], 30000))
	.then(() => broker.call("power.create", { value: 3, result: null }))
	.then(async doc => {
		const id = doc._id;
		// Warm-up: 2000 calls, like the suite's own.
		await hammer(1, 30, 2000, () => broker.call("power.get", { id }));
		console.log(`READY driver ${id}`);
		commands(broker, async line => {
			const [cmd, inFlight, seconds] = line.split(/\s+/);
			if (cmd === "get") {
				const r = await hammer(Number(inFlight), Number(seconds), 2000000, () =>
					broker.call("power.get", { id })
				);
				console.log(`CALLS ${r.calls} ${r.elapsed} ${r.p50} ${r.p99} ${r.errors}`);
			}
		});
	});
