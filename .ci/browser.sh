# Sourced by .ci/run: Debian's chromium (the report's headless render test) and a font with Hangul glyphs
# (Korean label names in the report's charts). Installed when missing; on failure the render test is
# skipped with its reason and the charts fall back to the default font (the rest of CI still runs).
browser_fonts() {
    local want=()
    command -v chromium >/dev/null 2>&1 || want+=(chromium)
    fc-list 2>/dev/null | grep -qi -E "nanum|noto sans cjk" || want+=(fonts-nanum)
    [ ${#want[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || return 1
    echo "ci: installing ${want[*]} (Debian packages)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null) || return 1
}

browser_fonts || echo "ci: warning: could not install chromium / fonts-nanum; the report render test will be skipped"
