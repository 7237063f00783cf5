// The API broker: moleculer-web on 127.0.0.1:$ZS_SUITE_MOL_HTTP_PORT in front of the owner broker's
// `power` service (GET /power/:id -> power.get, POST /power -> power.create).
"use strict";

const ApiGateway = require("moleculer-web");
const { makeBroker, commands } = require("./common");

const broker = makeBroker("api");
broker.createService({
	name: "api",
	mixins: [ApiGateway],
	settings: {
		ip: "127.0.0.1",
		port: Number(process.env.ZS_SUITE_MOL_HTTP_PORT),
		routes: [
			{
				path: "/",
				mappingPolicy: "restrict",
				bodyParsers: { json: true },
				aliases: { "GET power/:id": "power.get", "POST power": "power.create" }
			}
		]
	}
});

broker
	.start()
	.then(() => broker.waitForServices(["power"], 30000))
	.then(() => {
		console.log(`READY api 127.0.0.1:${process.env.ZS_SUITE_MOL_HTTP_PORT}`);
		commands(broker, () => {});
	});
