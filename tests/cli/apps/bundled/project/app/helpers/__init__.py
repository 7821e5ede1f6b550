def greeting() -> str:
    return "hello from helpers"
