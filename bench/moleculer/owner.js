// The owner broker: `power` (get/create) and `tick` (create, emitting `tick.created` to the
// subscriber broker) in moleculer-db's memory adapter. Command `produce <loops> <seconds>`:
// creates ticks locally from `loops` concurrent loops, unpaced, prints `SENT <n> <seconds>`.
"use strict";

const DbService = require("moleculer-db");
const { makeBroker, commands, hammer } = require("./common");

const broker = makeBroker("owner");
broker.createService({ name: "power", mixins: [DbService] });
broker.createService({
	name: "tick",
	mixins: [DbService],
	entityCreated(json, ctx) {
		ctx.emit("tick.created", json);
	}
});

broker.start().then(() => {
	console.log(`READY owner ${process.pid}`);
	commands(broker, async line => {
		const [cmd, loops, seconds] = line.split(/\s+/);
		if (cmd === "produce") {
			const r = await hammer(Number(loops), Number(seconds), 2000000, n =>
				broker.call("tick.create", { n })
			);
			console.log(`SENT ${r.calls} ${r.elapsed} ${r.errors}`);
		}
	});
});
