// The subscriber broker: counts `tick.created` events. Commands: `report` prints
// `COUNT <n> <first-to-last seconds> 0`, `reset` zeroes the counters.
"use strict";

const { makeBroker, commands } = require("./common");

let count = 0;
let first = null;
let last = null;
const broker = makeBroker("sub");
broker.createService({
	name: "counter",
	events: {
		"tick.created"() {
			const now = process.hrtime.bigint();
			if (count === 0) first = now;
			last = now;
			count += 1;
		}
	}
});

broker
	.start()
	.then(() => broker.waitForServices(["tick"], 30000))
	.then(() => {
		console.log(`READY sub ${process.pid}`);
		commands(broker, line => {
			if (line === "report") {
				const span = first === null ? 0 : Number(last - first) / 1e9;
				console.log(`COUNT ${count} ${span} 0`);
			} else if (line === "reset") {
				count = 0;
				first = last = null;
				console.log("COUNT 0 0 0");
			}
		});
	});
