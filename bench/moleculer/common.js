// The brokers of the Moleculer peer of the zeroservices benchmark suite (issue 19), started as
// child processes by zeroservices/benches/suite.rs. Loopback only: the TCP transporter's UDP
// discovery is off (static `urls`, every node on 127.0.0.1), its TCP server listens on
// 127.0.0.1, and each node announces 127.0.0.1 as its address. Protocol with the suite: a line
// `READY <fields>` on stdout when started, commands on stdin (one a line), the process exits when
// its stdin closes.
"use strict";

const net = require("net");
const readline = require("readline");
const { ServiceBroker } = require("moleculer");
const path = require("path");
// Not in the package's exports: required by its file path.
const TcpReader = require(path.join(__dirname, "node_modules/moleculer/src/transporters/tcp/tcp-reader.js"));

// The transporter's TCP server binds every interface by default: bind loopback instead.
TcpReader.prototype.listen = function listen() {
	return new this.Promise((resolve, reject) => {
		const server = net.createServer(socket => this.onTcpClientConnected(socket));
		server.on("error", err => reject(err));
		server.listen({ port: this.opts.port, host: "127.0.0.1", exclusive: true }, () => {
			this.opts.port = server.address().port;
			this.connected = true;
			resolve(this.opts.port);
		});
		this.server = server;
	});
};

/** `ZS_SUITE_MOL_NODES`: `{"owner": port, ...}`, every node of the run and its TCP port. */
function nodes() {
	return JSON.parse(process.env.ZS_SUITE_MOL_NODES || "{}");
}

/** A broker named `nodeID` on the TCP transporter, its peers given statically. */
function makeBroker(nodeID) {
	const all = nodes();
	if (!all[nodeID]) throw new Error(`ZS_SUITE_MOL_NODES has no port for ${nodeID}`);
	const urls = Object.entries(all).map(([id, port]) => `127.0.0.1:${port}/${id}`);
	const broker = new ServiceBroker({
		nodeID,
		namespace: process.env.ZS_SUITE_MOL_NAMESPACE || "zsbench",
		logger: { type: "Console", options: { level: "warn" } },
		transporter: {
			type: "TCP",
			options: { udpDiscovery: false, urls, port: all[nodeID], useHostname: false }
		},
		metrics: false,
		tracing: false,
		requestTimeout: 10 * 1000
	});
	const local = broker.registry.nodes.localNode;
	local.hostname = "127.0.0.1";
	local.ipList = ["127.0.0.1"];
	return broker;
}

/** Calls `onLine(line)` for each line on stdin; stops the broker and exits when stdin closes. */
function commands(broker, onLine) {
	const rl = readline.createInterface({ input: process.stdin });
	rl.on("line", line => {
		Promise.resolve(onLine(line.trim())).catch(err => {
			console.error(`command ${line}: ${err && err.message}`);
			console.log("ERROR");
		});
	});
	rl.on("close", () => {
		broker.stop().finally(() => process.exit(0));
	});
}

/** Runs `loops` concurrent loops of `call()` until `seconds` pass (at most `max` calls). */
async function hammer(loops, seconds, max, call) {
	const started = process.hrtime.bigint();
	const deadline = started + BigInt(Math.round(seconds * 1e9));
	let issued = 0;
	let errors = 0;
	const latencies = [];
	async function loop() {
		while (issued < max && process.hrtime.bigint() < deadline) {
			issued += 1;
			const t = process.hrtime.bigint();
			try {
				await call(issued);
				latencies.push(Number(process.hrtime.bigint() - t) / 1e3);
			} catch (_) {
				errors += 1;
			}
		}
	}
	await Promise.all(Array.from({ length: loops }, loop));
	const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
	latencies.sort((a, b) => a - b);
	const pct = p =>
		latencies.length ? latencies[Math.round((latencies.length - 1) * p)] : NaN;
	return { calls: latencies.length, errors, elapsed, p50: pct(0.5), p99: pct(0.99) };
}

module.exports = { makeBroker, commands, hammer };
