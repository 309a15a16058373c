"""wordcount: a plugin without dependencies. Reads JSON on stdin, prints JSON on stdout."""

import collections
import json
import re
import sys


def main() -> None:
    command = sys.argv[1]
    args = json.load(sys.stdin)
    text = args["text"]
    words = re.findall(r"[\w']+", text.lower())
    if command == "count":
        result = {"words": len(words), "lines": len(text.splitlines()), "characters": len(text)}
    elif command == "top":
        result = collections.Counter(words).most_common(int(args.get("limit", 5)))
    else:
        print(json.dumps({"success": False, "error": f"unknown command {command}"}))
        return
    print(json.dumps({"success": True, "result": result}))


if __name__ == "__main__":
    main()
