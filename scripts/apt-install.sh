# Sourced by the setup scripts: `apt_install PKG...` installs the given Debian packages (with
# sudo when not root); nothing happens when the list is empty.
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "installing: $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
