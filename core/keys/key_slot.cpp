#include "core/keys/key_slot.hpp"

#include "core/error.hpp"

#include <botan/base64.h>
#include <botan/exceptn.h>

namespace vmcrypt {

namespace {

bool is_token(const std::string& s)
{
    if (s.empty())
        return false;
    for (char c : s) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '_' || c == '.' || c == '+' || c == '/' || c == '=' || c == ':';
        if (!ok)
            return false;
    }
    return true;
}

}  // namespace

std::string KeySlot::to_text() const
{
    std::string text = "type=" + type;
    for (const auto& [name, value] : params)
        text += ";" + name + "=" + value;
    text += ";wrap=aes-kw;dek=" + Botan::base64_encode(wrapped_dek.data(), wrapped_dek.size());
    return text;
}

KeySlot KeySlot::parse(const std::string& text, const std::string& where)
{
    KeySlot slot;
    std::size_t start = 0;
    while (start <= text.size()) {
        std::size_t end = text.find(';', start);
        if (end == std::string::npos)
            end = text.size();
        std::string item = text.substr(start, end - start);
        std::size_t eq = item.find('=');
        if (eq == std::string::npos || eq == 0)
            throw InvalidInput(where + ": key slot item \"" + item + "\" is not name=value");
        std::string name = item.substr(0, eq);
        std::string value = item.substr(eq + 1);
        if (!is_token(name) || !is_token(value))
            throw InvalidInput(where + ": key slot item \"" + name + "\" has invalid characters");

        if (name == "type")
            slot.type = value;
        else if (name == "wrap") {
            if (value != "aes-kw")
                throw UnsupportedInput(where + ": key wrap \"" + value + "\" is not supported (expected aes-kw)");
        } else if (name == "dek") {
            try {
                Botan::secure_vector<std::uint8_t> raw = Botan::base64_decode(value);
                slot.wrapped_dek.assign(raw.begin(), raw.end());
            } catch (const Botan::Exception&) {
                throw InvalidInput(where + ": dek is not valid base64");
            }
        } else if (!slot.params.emplace(name, value).second)
            throw InvalidInput(where + ": key slot item \"" + name + "\" appears twice");
        start = end + 1;
    }

    if (slot.type.empty())
        throw InvalidInput(where + ": key slot has no type");
    // 24 bytes: the 16-byte key of a legacy qcow AES image that vmcrypt is decrypting. The record's
    // cipher decides which size the unwrapped key must have.
    if (slot.wrapped_dek.size() != 72 && slot.wrapped_dek.size() != 24)
        throw InvalidInput(where + ": wrapped DEK is " + std::to_string(slot.wrapped_dek.size()) +
                           " bytes, expected 72 (a 64-byte DEK wrapped with RFC 3394)");
    return slot;
}

const std::string& KeySlot::param(const std::string& name, const std::string& where) const
{
    auto it = params.find(name);
    if (it == params.end())
        throw InvalidInput(where + ": key slot of type " + type + " has no \"" + name + "\" parameter");
    return it->second;
}

}  // namespace vmcrypt
