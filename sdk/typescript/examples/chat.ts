// A multi-turn chat over raw token ids on one session: each turn appends only its own tokens, and
// the model's replies stay in the runtime's history as the exact ids it generated.
//
//   kakeya serve &                               # the runtime, on the embedded model
//   npm run build && npx tsc -p tsconfig.test.json
//   node .test-build/examples/chat.js --address 127.0.0.1:50051
//   ... | node .test-build/examples/chat.js --stdin   # one turn a line: space-separated ids
//
// The built-in turns are SmolLM2-135M-Instruct's ChatML, tokenized ahead of time; this SDK has no
// tokenizer. The Python SDK has one (kakeya.load_tokenizer) to make such ids, and to read replies.

import { createInterface } from "node:readline";

import { Client, StopReason } from "kakeya";

// <|im_start|>system\nYou are a concise assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital
// of France?<|im_end|>\n<|im_start|>assistant\n
const FIRST_TURN = [1, 9690, 198, 2683, 359, 253, 19484, 11173, 30, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282,
  4649, 47, 2, 198, 1, 520, 9531, 198];
// \n<|im_start|>user\nWhat is a famous landmark there?<|im_end|>\n<|im_start|>assistant\n
const SECOND_TURN = [198, 1, 4093, 198, 1780, 314, 253, 4248, 18033, 665, 47, 2, 198, 1, 520, 9531, 198];
// \n<|im_start|>user\nSummarize our conversation in one sentence.<|im_end|>\n<|im_start|>assistant\n
const THIRD_TURN = [198, 1, 4093, 198, 13764, 3298, 836, 653, 6634, 281, 582, 6330, 30, 2, 198, 1, 520, 9531, 198];
const IM_END = 2; // ends an assistant turn: the EOS id of the session

async function* turns(fromStdin: boolean): AsyncGenerator<number[]> {
  if (!fromStdin) {
    yield* [FIRST_TURN, SECOND_TURN, THIRD_TURN];
    return;
  }
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim()) yield line.trim().split(/\s+/).map(Number);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string): string | undefined => {
    const index = args.indexOf(name);
    return index >= 0 ? args[index + 1] : undefined;
  };
  const client = new Client(option("--address") ?? "127.0.0.1:50051", { apiKey: option("--api-key") });
  const maxTokens = Number(option("--max-tokens") ?? 48);
  try {
    await client.withSession({ eosTokenIds: [IM_END], label: "ts-chat" }, async (session) => {
      for await (const turn of turns(args.includes("--stdin"))) {
        await session.append(turn);
        const reply = session.generate(maxTokens);
        process.stdout.write(`user> ${turn.length} ids\nassistant> `);
        for await (const tokenId of reply) {
          process.stdout.write(`${tokenId} `);
        }
        if (reply.stopReason !== StopReason.EOS) {
          await session.append([IM_END]); // cut by maxTokens: close the turn as the template would
        }
        const info = await session.info();
        console.log(`\n  [${reply.stopReason}: ${reply.generatedTokenCount} tokens, prefill ` +
          `${reply.prefillTokenCount}; history ${info.historyLength} tokens]`);
      }
    });
  } finally {
    await client.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
